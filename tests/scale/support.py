"""Helpers for the socket tests against real daphne processes: start them with their pid (to
read their memory), seed deliveries over the signed intake, and run fleets of asyncio clients."""

from __future__ import annotations

import json
import re
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from django.conf import settings
from django.utils import timezone

from tests.processes import ROOT, free_port, port_open
from tests.services import process, service_env
from tracking import signing

_ids = iter(range(1, 10**9))


@dataclass
class Server:
    url: str
    pid: int

    @property
    def ws(self) -> str:
        return self.url.replace("http://", "ws://")

    def rss_mb(self) -> float:
        """The daphne process's resident memory, from /proc."""
        for line in open(f"/proc/{self.pid}/status").read().splitlines():  # noqa: SIM115
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


@contextmanager
def daphne_server(port: int | None = None, **extra_env: str) -> Iterator[Server]:
    """One daphne on a free port (or on `port`: a restart on the same address), like
    tests.services.daphne, but yielding its pid too."""
    (ROOT / "var").mkdir(exist_ok=True)
    port = port or free_port()
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"]
    env = service_env(PORCHLIGHT_PUBLIC_URL=f"http://127.0.0.1:{port}", **extra_env)
    with process(command, env=env, ready=lambda: port_open(port), name=f"daphne-{port}") as proc:
        yield Server(f"http://127.0.0.1:{port}", proc.pid)


def raise_open_files() -> None:
    """Fleets hold hundreds of sockets: raise this process's soft limit (children inherit it)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def at(minutes: float) -> str:
    return (timezone.now().replace(microsecond=0) + timedelta(minutes=minutes)).isoformat()


def post(base: str, *events: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    body = json.dumps({"events": list(events)}).encode()
    signed = {
        "Content-Type": "application/json",
        signing.HEADER: signing.sign(secret=settings.PORCHLIGHT_ROUTING_SECRETS[0], body=body),
        **(headers or {}),
    }
    response = httpx.post(f"{base}/api/v1/events", content=body, headers=signed, timeout=30)
    assert response.status_code == 200, response.text
    return response


def upsert(reference: str) -> dict[str, Any]:
    from tests.tracking.test_page import upsert_event

    return upsert_event(reference)


def status(reference: str, value: str, minutes: float, driver: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"reference": reference, "status": value}
    if driver:
        data["driver"] = {"id": driver, "name": "Sam Ortiz", "vehicle": "White van"}
    return {"id": f"sc_{next(_ids)}", "type": "delivery.status", "occurred_at": at(minutes), "data": data}


def eta(reference: str, minutes: float, stops_before: int) -> dict[str, Any]:
    data = {"reference": reference, "eta": at(minutes + 30), "stops_before": stops_before}
    return {"id": f"sc_{next(_ids)}", "type": "delivery.eta", "occurred_at": at(minutes), "data": data}


def ping(driver: str, recorded_at: str, lat: float, lon: float = -99.4876) -> dict[str, Any]:
    data = {"driver_id": driver, "lat": lat, "lon": lon, "heading": 90, "recorded_at": recorded_at}
    return {"id": f"sc_{next(_ids)}", "type": "driver.location", "occurred_at": recorded_at, "data": data}


def seed_live(base: str, prefix: str, count: int, *, driver: str) -> list[str]:
    """`count` deliveries out for delivery with `driver`, one stop away (their pages show the
    driver's position); returns their tracking tokens."""
    from tracking.models import Delivery

    references = [f"{prefix}-{n}" for n in range(count)]
    for start in range(0, count, 50):
        chunk = references[start : start + 50]
        events = [upsert(r) for r in chunk]
        events += [status(r, "out_for_delivery", -10, driver) for r in chunk]
        events += [eta(r, -9, 1) for r in chunk]
        post(base, *events)
    rows = Delivery.objects.filter(reference__in=references).values_list("reference", "tracking_token")
    tokens = dict(rows)
    return [tokens[r] for r in references]


def page_backoff() -> tuple[float, float]:
    """BASE and CAP (seconds) of the page's retry(), and a check that the formula ported here
    is still the script's: if the script changes how it waits, the port must change too."""
    source = (ROOT / "static" / "js" / "tracking.js").read_text()
    assert "Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(2, attempts))" in source
    assert re.search(r"setTimeout\(connect, Math\.random\(\) \* cap\)", source)
    assert re.search(r"socket\.onopen = function \(\) \{\s*opened = true; attempts = 0;", source)
    base = re.search(r"BACKOFF_BASE_MS = (\d+)", source)
    cap = re.search(r"BACKOFF_CAP_MS = (\d+)", source)
    assert base and cap, "the page's backoff constants were not found"
    return int(base.group(1)) / 1000, int(cap.group(1)) / 1000
