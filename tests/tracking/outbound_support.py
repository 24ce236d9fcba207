"""Test helpers for the outbox: a fake routing backend (a real HTTP server on loopback, the
third-party edge), its fixtures (import `backend_fixture`, `eager_fixture` into a test module
to use `backend`, `eager`) and a small delivery factory."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.utils import timezone

from tracking import signing
from tracking.models import Delivery

OUTBOUND_SECRET = "test-outbound-secret"
MAX_BODY = 1024 * 1024


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event_ids(self) -> list[str]:
        return [event["id"] for event in self.json["events"]]

    def verify(self, secret: str = OUTBOUND_SECRET) -> None:
        signing.verify(
            header=self.headers.get(signing.HEADER), body=self.body, secrets=[secret], tolerance=300
        )


class FakeRoutingBackend:
    """Records every POST, answers `status` (or the next of `statuses`), and with `hang` set
    holds the answer until the test ends, so that the client's timeout fires."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[Received] = []
        self.status = 200
        self.statuses: list[int] = []
        self.hang = False
        self.error_body = b'{"error":"unavailable"}'
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/routing/events"

    def ids(self) -> list[str]:
        with self._lock:
            return [event_id for request in self.received for event_id in request.event_ids]

    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def delivered_ids(self) -> list[str]:
        """Ids of the requests answered with a 2xx, repeats included."""
        with self._lock:
            return [i for request in self.received if request.answered < 300 for i in request.event_ids]

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            status = self.statuses.pop(0) if self.statuses else self.status
            self.received.append(Received(path, headers, body, status))
            return status

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
                body = self.rfile.read(length)
                status = backend._record(self.path, dict(self.headers.items()), body)
                if backend.hang:
                    backend._release.wait(timeout=30)
                reply = b'{"ok":true}' if status < 300 else backend.error_body
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    if 300 <= status < 400:
                        self.send_header("Location", "/elsewhere")
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:
                    pass  # the client gave up (its timeout), as intended

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> FakeRoutingBackend:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def fake_routing_backend(port: int = 0) -> Iterator[FakeRoutingBackend]:
    backend = FakeRoutingBackend(port).start()
    try:
        yield backend
    finally:
        backend.stop()


@pytest.fixture(name="eager")
def eager_fixture() -> Iterator[None]:
    """Run tasks in this process even in the production pass: the tests that use it call
    the outbox directly; the real worker is exercised in test_outbound_worker.py."""
    from config.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


@pytest.fixture(name="backend")
def backend_fixture(settings: Any, eager: None) -> Iterator[FakeRoutingBackend]:
    """The fake routing backend, configured as PORCHLIGHT_ROUTING_URL with a short timeout."""
    with fake_routing_backend() as fake:
        settings.PORCHLIGHT_ROUTING_URL = fake.url
        settings.PORCHLIGHT_OUTBOUND_SECRET = OUTBOUND_SECRET
        settings.PORCHLIGHT_OUTBOUND_TIMEOUT = 0.3
        yield fake


def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused), free to bind later."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_delivery(**fields: Any) -> Delivery:
    defaults: dict[str, Any] = {
        "reference": f"ORD-{uuid.uuid4().hex[:10]}",
        "customer_name": "Ada Lovelace",
        "phone": "+15555550100",
        "email": "ada@example.com",
        "address_line1": "1 Main Street",
        "city": "Laredo",
        "postcode": "78040",
        "country": "US",
        "lat": 27.53,
        "lon": -99.49,
        "zone_code": "laredo-central",
        "details_at": timezone.now(),
    }
    return Delivery.objects.create(**{**defaults, **fields})


SLOT_DATA = {
    "slot": {
        "start": "2026-11-22T14:00:00-06:00",
        "end": "2026-11-22T16:00:00-06:00",
        "zone": "laredo-central",
    },
    "previous": None,
    "by": "customer",
}
