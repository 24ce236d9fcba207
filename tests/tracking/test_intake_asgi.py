"""tracking/intake_asgi.py: the intake answered on the event loop gives the answers the Django
view gives, for good, bad, hostile and oversized requests, with the request id, the security
headers and the log line the middleware would add; what it does not take, Django answers."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.db import OperationalError
from hypothesis import given
from hypothesis import settings as hypothesis_settings

from config.asgi import application
from config.handler import SyncChainASGIHandler
from tests.config.test_handler import count_thread_crossings
from tests.config.test_logging import log_lines, parsed  # noqa: F401 (fixture)
from tests.conftest import signed_post
from tests.tracking.intake_events import at, next_id, ping, status, upserted
from tests.tracking.test_intake_properties import FIXTURE_SETTINGS, json_values
from tracking import signing
from tracking.intake_asgi import LOOP_BODY, IntakeApp
from tracking.models import Delivery, InboundEvent, LocationPing
from tracking.views_api import MAX_BODY

# The committer applies the events in its own thread, on its own connection: commits are real.
pytestmark = pytest.mark.django_db(transaction=True)

PATH = "/api/v1/events"


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def signed_headers(body: bytes, **extra: str) -> dict[str, str]:
    secret = settings.PORCHLIGHT_ROUTING_SECRETS[0]
    return {
        "content-type": "application/json",
        signing.HEADER: signing.sign(secret=secret, body=body),
        **extra,
    }


def _scope(headers: dict[str, str], *, method: str = "POST", scheme: str = "http") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(name.lower().encode(), value.encode("latin-1")) for name, value in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


def call(
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    chunks: list[bytes] | None = None,
    scheme: str = "http",
    length: bool = True,
    app: Any = application,
) -> Answer:
    """One request to the product's ASGI application, as daphne hands it over."""
    sent = dict(signed_headers(body) if headers is None else headers)
    sent.setdefault("host", "localhost")
    if length:
        sent.setdefault("content-length", str(len(body)))
    scope = _scope(sent, method=method, scheme=scheme)

    async def run() -> Answer:
        communicator = ApplicationCommunicator(app, scope)
        pieces = chunks if chunks is not None else [body]
        for n, piece in enumerate(pieces):
            await communicator.send_input(
                {"type": "http.request", "body": piece, "more_body": n < len(pieces) - 1}
            )
        start = await communicator.receive_output(20)
        content = b""
        while True:
            message = await communicator.receive_output(20)
            content += message.get("body", b"")
            if not message.get("more_body"):
                break
        await communicator.wait(20)
        got = {name.decode().lower(): value.decode("latin-1") for name, value in start["headers"]}
        return Answer(start["status"], got, content)

    return async_to_sync(run)()


def both(client: Any, body: bytes, headers: dict[str, str]) -> tuple[Answer, Any]:
    django_headers = {name: value for name, value in headers.items() if name != "content-type"}
    through_django = client.post(
        PATH, data=body, content_type=headers.get("content-type", ""), headers=django_headers
    )
    return call(body, headers), through_django


# --- the same answers as the Django view ----------------------------------------------------


def test_events_are_applied_and_answered_as_the_django_view_answers_them(client):
    created = upserted(next_id("up"))
    answer = call(json.dumps(created).encode())
    assert answer.status == 200
    [result] = answer.json()["results"]
    delivery = Delivery.objects.get(reference=created["data"]["reference"])
    assert result == {
        "id": created["id"],
        "result": "accepted",
        "tracking_url": f"{settings.PORCHLIGHT_PUBLIC_URL}/t/{delivery.tracking_token}/",
    }
    # The same id through Django is a duplicate: one store, whichever door.
    assert signed_post(client, created).json()["results"][0]["result"] == "duplicate"

    moved = status(created["data"]["reference"], "out_for_delivery", occurred_at=at(1))
    assert signed_post(client, moved).json()["results"][0]["result"] == "accepted"
    assert call(json.dumps(moved).encode()).json()["results"][0]["result"] == "duplicate"
    delivery.refresh_from_db()
    assert delivery.status == "out_for_delivery"


def _batch_mixing_good_and_bad() -> bytes:
    good = ping("drv-asgi")
    bad = {**ping("drv-asgi"), "data": {"driver_id": "drv-asgi", "lat": 91, "lon": 0, "recorded_at": at()}}
    return json.dumps({"events": [good, bad, good, {"id": 7}, "x", None]}).encode()


REFUSALS = {
    "declared too large": (b"{}", {"content-type": "application/json", "content-length": str(MAX_BODY + 1)}),
    "not json": (b"{}", {"content-type": "text/plain"}),
    "latin-1": (b"{}", {"content-type": "application/json; charset=latin-1"}),
    "no content type": (b"{}", {}),
    "no signature": (b"{}", {"content-type": "application/json"}),
    "bad signature": (b"{}", {"content-type": "application/json", signing.HEADER: "t=1,v1=" + "0" * 64}),
    "malformed signature": (b"{}", {"content-type": "application/json", signing.HEADER: "v1"}),
    "huge signature": (b"{}", {"content-type": "application/json", signing.HEADER: "t=1," * 5000}),
    "expired": (
        b"{}",
        {
            "content-type": "application/json",
            signing.HEADER: signing.sign(secret="x", body=b"{}", timestamp=1),
        },
    ),
}
SIGNED_BODIES = {
    "invalid json": b"{",
    "not utf-8": b'{"id": "\xff"}',
    "NaN": b'{"id": NaN}',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "a string": b'"hello"',
    "no events": b'{"events": []}',
    "501 events": json.dumps({"events": [ping("d")] * 501}).encode(),
    "unknown envelope": b'{"what": 1}',
    "NUL and lone surrogate": json.dumps({"id": "a\u0000", "type": "x\ud800", "data": {}}).encode(),
    "bad events beside good": _batch_mixing_good_and_bad(),
    "long unicode": json.dumps(
        {"id": "é" * 5000, "type": "delivery.status", "data": {"reference": "😀" * 999}}
    ).encode(),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_a_refused_request_gets_the_same_answer_as_through_django(client, case):
    body, headers = REFUSALS[case]
    ours, django = both(client, body, headers)
    assert ours.status == django.status_code and 400 <= ours.status < 500
    assert ours.json() == django.json()


@pytest.mark.parametrize("case", SIGNED_BODIES)
def test_a_signed_bad_or_hostile_body_gets_the_same_answer_as_through_django(client, case):
    body = SIGNED_BODIES[case]
    ours = call(body)
    # The good ping of the mixed batch is accepted once; through Django, it is a duplicate.
    django = signed_post(client, body)
    assert ours.status == django.status_code and ours.status < 500
    ours_doc, django_doc = ours.json(), django.json()
    if case == "bad events beside good":
        assert [r["result"] for r in ours_doc["results"]] == [
            "accepted", "rejected", "duplicate", "rejected", "rejected", "rejected",
        ]  # fmt: skip
        assert [r["result"] for r in django_doc["results"]] == [
            "duplicate", "rejected", "duplicate", "rejected", "rejected", "rejected",
        ]  # fmt: skip
        assert LocationPing.objects.count() == 1
    else:
        assert ours_doc == django_doc


@hypothesis_settings(FIXTURE_SETTINGS, max_examples=60)
@given(document=json_values)
def test_random_json_bodies_get_the_same_answer_as_through_django_and_never_a_5xx(client, document):
    body = json.dumps(document).replace("Infinity", "1e400").encode()
    ours = call(body)
    django = signed_post(client, body)
    assert ours.status == django.status_code and ours.status in (200, 400)
    if ours.status == 400 or all(r["result"] == "rejected" for r in ours.json()["results"]):
        assert ours.json() == django.json()


def test_a_body_over_1_mib_without_a_length_is_refused_with_413_and_nothing_is_kept():
    chunk = b" " * (256 * 1024)
    answer = call(b"", {"content-type": "application/json"}, chunks=[chunk] * 5, length=False)
    assert answer.status == 413
    assert answer.json()["error"] == "payload_too_large"
    assert not InboundEvent.objects.exists()


def test_a_client_gone_before_its_whole_body_arrived_gets_nothing_applied_and_no_answer():
    body = json.dumps(ping("drv-gone")).encode()

    async def run() -> list[Any]:
        communicator = ApplicationCommunicator(application, _scope(signed_headers(body, host="localhost")))
        await communicator.send_input({"type": "http.request", "body": body[:10], "more_body": True})
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(20)
        return [message async for message in _drain(communicator)]

    assert async_to_sync(run)() == []
    assert not InboundEvent.objects.exists()


async def _drain(communicator: ApplicationCommunicator) -> Any:
    while not communicator.output_queue.empty():
        yield await communicator.receive_output()


def test_a_big_batch_is_checked_and_applied_off_the_loop_and_every_event_kept():
    pings = [ping(f"drv-big-{n % 7}") for n in range(120)]
    body = json.dumps({"events": pings}).encode()
    assert len(body) > LOOP_BODY
    answer = call(body)
    assert answer.status == 200
    assert [r["result"] for r in answer.json()["results"]] == ["accepted"] * 120
    assert LocationPing.objects.count() == 120


# --- what the middleware would add ------------------------------------------------------------


def test_the_answer_carries_a_request_id_the_log_line_carries_too_and_the_security_headers(log_lines):  # noqa: F811
    answer = call(json.dumps(ping("drv-h")).encode())
    assert answer.status == 200
    request_id = answer.headers["x-request-id"]
    assert uuid.UUID(request_id)
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "same-origin"
    assert answer.headers["cross-origin-opener-policy"] == "same-origin"
    assert answer.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert int(answer.headers["content-length"]) == len(answer.body)
    finished = [line for line in parsed(log_lines) if line.get("event") == "request_finished"]
    assert finished[-1]["request_id"] == request_id
    assert finished[-1]["code"] == 200 and finished[-1]["request"] == "POST /api/v1/events"
    assert finished[-1]["ip"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("lb-1234567890", True), ("x" * 10_000, False), ("abc\r\nlevel: error", False), ("short", False)],
)
def test_an_upstream_request_id_is_kept_only_when_it_looks_like_one(sent, kept):
    body = b"{}"
    answer = call(body, {**signed_headers(body), "x-request-id": sent})
    assert (answer.headers["x-request-id"] == sent) is kept
    assert answer.status == 400


def test_a_database_that_cannot_be_reached_gives_503_with_retry_after(monkeypatch):
    def unreachable(**kwargs: Any) -> Any:
        raise OperationalError("connection refused")

    monkeypatch.setattr("tracking.services.events_ingest", unreachable)
    answer = call(json.dumps(ping("drv-down")).encode())
    assert answer.status == 503
    assert answer.headers["retry-after"] == "10"
    assert answer.json()["error"] == "service_unavailable"


def test_a_bug_gives_a_json_500_and_is_logged_as_django_logs_it(monkeypatch, caplog):
    def broken(**kwargs: Any) -> Any:
        raise KeyError("bug")

    monkeypatch.setattr("tracking.services.events_ingest", broken)
    with caplog.at_level(logging.ERROR, logger="django.request"):
        answer = call(json.dumps(ping("drv-bug")).encode())
    assert answer.status == 500
    assert answer.json()["error"] == "server_error"
    assert any(record.name == "django.request" and record.exc_info for record in caplog.records)


# --- what Django answers --------------------------------------------------------------------


def test_other_methods_are_answered_by_django_with_405():
    answer = call(b"", {}, method="GET")
    assert answer.status == 405
    assert answer.headers["allow"] == "POST"


def test_a_host_not_allowed_is_answered_by_django_with_400():
    body = json.dumps(ping("drv-host")).encode()
    answer = call(body, {**signed_headers(body), "host": "evil.example"})
    assert answer.status == 400
    assert not LocationPing.objects.exists()


def test_with_https_required_plain_http_is_redirected_and_https_gets_hsts(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    # Django's middleware reads these settings when it is built: a new chain.
    app = IntakeApp(SyncChainASGIHandler())
    body = json.dumps(ping("drv-tls")).encode()
    plain = call(body, app=app)
    assert plain.status == 301
    assert plain.headers["location"].startswith("https://")
    assert not LocationPing.objects.exists()

    secure = call(body, {**signed_headers(body), "x-forwarded-proto": "https"}, app=app)
    assert secure.status == 200
    assert secure.headers["strict-transport-security"] == "max-age=3600"
    assert LocationPing.objects.count() == 1


def test_a_single_event_is_answered_without_a_thread_of_its_own(monkeypatch):
    crossings = count_thread_crossings(monkeypatch)
    answer = call(json.dumps(ping("drv-loop")).encode())
    assert answer.status == 200
    assert answer.json()["results"][0]["result"] == "accepted"
    # Through Django it takes the request thread (and a signal or two); here, none: the
    # committer's own thread applies it.
    assert crossings == []
