"""Load held (issue #7, point 7): sockets, pings and page views at once on the production stack.

Two daphne processes behind one Redis (channel layer and cache) and one PostgreSQL database;
2,000 open tracking sockets (10 per driver, spread over both processes), 200 drivers pinging
once a second through the signed intake (batched every 100 ms, as a routing backend sends
them), and tracking page views at a steady rate (open loop) over both processes.

Three phases, one run:
- pages alone: page views with no socket open and no ping (the page baseline);
- pushes alone: sockets and pings, no page views (the push baseline);
- everything: sockets, pings and page views together, for BENCH_LOAD_SECONDS (60).
In both socket phases BENCH_LOAD_STALLED (50) of the sockets are viewers that never read (S2):
they complete the handshake and never read a byte again; the others' figures must not suffer.
Reported: error rate (pages that were not 2xx, intake batches that failed, sockets that did not
open, positions that never arrived), page p99 and push p99 (from the ping's `recorded_at`,
stamped as it is sent, to its arrival on a socket), absolute and against their baselines.

Knobs (environment): BENCH_LOAD_SOCKETS (2000), BENCH_LOAD_DRIVERS (200), BENCH_LOAD_SECONDS
(60), BENCH_LOAD_BASELINE_SECONDS (20), BENCH_LOAD_PAGE_RATE (40 req/s), BENCH_LOAD_STALLED (50).
Sub-command used internally: `client <spec> <out>` (the socket fleet, its own process).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
SOCKETS = int(os.environ.get("BENCH_LOAD_SOCKETS", "2000"))
DRIVERS = int(os.environ.get("BENCH_LOAD_DRIVERS", "200"))
SECONDS = float(os.environ.get("BENCH_LOAD_SECONDS", "60"))
BASELINE_SECONDS = float(os.environ.get("BENCH_LOAD_BASELINE_SECONDS", "20"))
PAGE_RATE = float(os.environ.get("BENCH_LOAD_PAGE_RATE", "40"))
STALLED = int(os.environ.get("BENCH_LOAD_STALLED", "50"))
SERVERS = 2

_SEED = """
from django.utils import timezone
from tracking.models import Delivery, Driver
now = timezone.now()
Driver.objects.bulk_create(Driver(external_id=f"load_{n}", name="Sam") for n in range(DRIVERS))
drivers = {d.external_id: d for d in Driver.objects.filter(external_id__startswith="load_")}
Delivery.objects.bulk_create(
    Delivery(reference=f"LOAD-{n}", customer_name="A", phone="+19565550123", address_line1="1 Main St",
             city="Laredo", postcode="78040", country="US", lat=27.5, lon=-99.5, details_at=now,
             status="arriving", status_at=now, driver=drivers[f"load_{n % DRIVERS}"])
    for n in range(SOCKETS)
)
"""


def raise_open_files() -> None:
    """Thousands of sockets: the soft limit up to the hard one (children inherit it)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- the socket fleet (a separate process) ---------------------------------------------------


async def _fleet(spec: dict[str, Any], out: Path) -> None:
    """Open every socket, then record (arrival time, latency) of every position until told to stop."""
    from websockets.asyncio.client import connect

    sockets: list[Any] = []
    failed = 0
    gate = asyncio.Semaphore(100)

    async def open_one(url: str, origin: str) -> None:
        nonlocal failed
        for attempt in range(6):
            try:
                async with gate:
                    sockets.append(await connect(url, origin=origin, compression=None, open_timeout=60))  # type: ignore[arg-type]
                return
            except Exception:
                await asyncio.sleep(0.5 * (attempt + 1))
        failed += 1

    async def stall(url: str, origin: str) -> None:
        """A viewer that completes the handshake and never reads again (a frozen tab)."""
        nonlocal failed
        parts = urlsplit(url)
        try:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: {origin}\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                raise OSError(head[:40])
            stalled.append(writer)  # kept open, never read
        except Exception:
            failed += 1

    stalled: list[Any] = []
    slow = spec["stalled"]
    await asyncio.gather(
        *(stall(url, origin) for url, origin in spec["targets"][:slow]),
        *(open_one(url, origin) for url, origin in spec["targets"][slow:]),
    )
    arrivals: list[tuple[float, float]] = []
    counts = [0] * len(sockets)

    async def watch(index: int, socket: Any) -> None:
        async for text in socket:
            if '"location"' in text:
                now = time.time()
                sent = datetime.fromisoformat(json.loads(text)["recorded_at"]).timestamp()
                arrivals.append((now, now - sent))
                counts[index] += 1

    watchers = [asyncio.create_task(watch(i, s)) for i, s in enumerate(sockets)]
    Path(spec["ready"]).write_text("ready")
    stop = Path(spec["stop"])
    while not stop.exists():
        await asyncio.sleep(0.1)
    await asyncio.sleep(2)  # the last pings in flight
    result = {"arrivals": arrivals, "sockets": len(sockets), "stalled": len(stalled), "failed": failed}
    out.write_text(json.dumps(result))
    for task in watchers:
        task.cancel()
    await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)


@contextmanager
def fleet(targets: list[tuple[str, str]]) -> Iterator[Any]:
    """Open the sockets from another process; yields a function that stops it and returns results."""
    with tempfile.TemporaryDirectory(prefix="porchlight-load-") as folder:
        paths = {name: Path(folder) / name for name in ("spec.json", "out.json", "ready", "stop")}
        spec = {
            "targets": targets,
            "ready": str(paths["ready"]),
            "stop": str(paths["stop"]),
            "stalled": STALLED,
        }
        paths["spec.json"].write_text(json.dumps(spec))
        command = [
            sys.executable,
            "-m",
            "bench.bench_load",
            "client",
            str(paths["spec.json"]),
            str(paths["out.json"]),
        ]
        proc = subprocess.Popen(command, cwd=ROOT)
        try:
            deadline = time.monotonic() + 300
            while not paths["ready"].exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the socket fleet did not connect")
                time.sleep(0.05)

            def stop() -> dict[str, Any]:
                paths["stop"].write_text("stop")
                proc.wait(timeout=120)
                return dict(json.loads(paths["out.json"].read_text()))

            yield stop
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# --- pings ------------------------------------------------------------------------------------


class Pinger(threading.Thread):
    """Every driver once a second, a tenth of them every 100 ms, alternating between servers."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.halt = threading.Event()
        self.sent: list[tuple[float, int]] = []  # (time, driver number)
        self.batches = 0
        self.failed = 0

    def run(self) -> None:
        from bench.common import event_request, post

        start = time.monotonic()
        tick = 0
        while not self.halt.is_set():
            delay = start + tick / 10 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = datetime.now(UTC)
            drivers = range(tick % 10, DRIVERS, 10)
            pings = [
                {
                    "id": f"load_{n}_{tick}", "type": "driver.location", "occurred_at": now.isoformat(),
                    "data": {"driver_id": f"load_{n}", "lat": 27.5 + tick / 1e5, "lon": -99.5,
                             "recorded_at": now.isoformat()},
                }
                for n in drivers
            ]  # fmt: skip
            try:
                status, _ = post(
                    self.urls[tick % len(self.urls)], event_request({"events": pings}), timeout=10
                )
            except OSError:
                status = 0
            self.batches += 1
            self.failed += status != 200
            if status == 200:
                self.sent += [(now.timestamp(), n) for n in drivers]
            tick += 1


def _pages(urls: list[str], paths: list[str], seconds: float) -> Any:
    from bench.common import Request, load

    count = int(PAGE_RATE * seconds)
    requests = [Request("GET", paths[n % len(paths)]) for n in range(count)]
    return load(urls, requests, concurrency=32, rate=PAGE_RATE, duration=seconds + 5, client="python")


def _pushes(
    results: dict[str, Any], sent: list[tuple[float, int]], since: float, until: float
) -> dict[str, float]:
    from bench.common import percentile

    window = [latency for arrived, latency in results["arrivals"] if since <= arrived - latency < until]
    # Viewers that read: target i follows driver i % DRIVERS, and the first STALLED never read.
    readers = [0] * DRIVERS
    for index in range(STALLED, SOCKETS):
        readers[index % DRIVERS] += 1
    expected = sum(readers[n] for at, n in sent if since <= at < until)
    return {
        "p50": percentile(window, 50) * 1000,
        "p99": percentile(window, 99) * 1000,
        "received": len(window),
        "expected": expected,
    }


def main() -> None:
    from bench.common import (
        Row,
        daphnes,
        fresh_database,
        log_count,
        manage,
        print_table,
        require,
        server_env,
        sql,
    )

    require(postgres=True, redis=True)
    raise_open_files()
    with fresh_database("load") as db_url:
        env = server_env(
            database_url=db_url, CHANNEL_LAYER_PREFIX=f"benchload{os.getpid()}", PORCHLIGHT_WS_MAX_PER_IP="0"
        )
        manage(
            ["shell", "-c", _SEED.replace("DRIVERS", str(DRIVERS)).replace("SOCKETS", str(SOCKETS))], env=env
        )
        tokens = [row[0] for row in sql(db_url, "SELECT tracking_token FROM tracking_delivery ORDER BY id")]
        paths = [f"/t/{token}/" for token in tokens]
        with daphnes(SERVERS, env=env, name="load") as urls:
            _pages(urls, paths[:50], 3)  # warm up both processes
            page_alone = _pages(urls, paths, BASELINE_SECONDS)
            targets = [
                (urls[i % SERVERS].replace("http", "ws") + f"/ws/t/{token}/", urls[i % SERVERS])
                for i, token in enumerate(tokens)
            ]
            with fleet(targets) as stop:
                pinger = Pinger(urls)
                pinger.start()
                time.sleep(3)  # the first pings settle
                alone_from = time.time()
                time.sleep(BASELINE_SECONDS)
                alone_until = busy_from = time.time()
                page_busy = _pages(urls, paths, SECONDS)
                busy_until = time.time()
                pinger.halt.set()
                pinger.join()
                results = stop()
    load_average = os.getloadavg()
    push_alone = _pushes(results, pinger.sent, alone_from, alone_until)
    push_busy = _pushes(results, pinger.sent, busy_from, busy_until)
    dropped = push_busy["expected"] - push_busy["received"]
    page_errors = page_busy.failed / page_busy.sent if page_busy.sent else 1.0
    rows = [
        Row(
            "sockets open (reading + stalled)",
            results["sockets"] + results["stalled"],
            "",
            goal=f"== {SOCKETS}",
            met=results["sockets"] + results["stalled"] == SOCKETS,
            detail=f"{results['stalled']} stalled",
        ),
        Row("closed as over capacity", log_count("websocket over capacity"), ""),
        Row("page p99, pages alone", page_alone.p(99), "ms", detail=f"{page_alone.sent} requests"),
        Row("page p99, with sockets and pings", page_busy.p(99), "ms", detail=f"{page_busy.sent} requests"),
        Row("  vs pages alone", page_busy.p(99) / page_alone.p(99) if page_alone.p(99) else 0, "x"),
        Row(
            "page error rate",
            page_errors * 100,
            "%",
            goal="== 0",
            met=page_busy.failed == 0,
            detail=f"failed {page_busy.failed}",
        ),
        Row("push p50, with page views", push_busy["p50"], "ms"),
        Row("push p99, pushes alone", push_alone["p99"], "ms", detail=f"{push_alone['received']} messages"),
        Row(
            "push p99, with page views",
            push_busy["p99"],
            "ms",
            goal="< 1000 ms",
            met=push_busy["p99"] < 1000,
            detail=f"{push_busy['received']} messages",
        ),
        Row("  vs pushes alone", push_busy["p99"] / push_alone["p99"] if push_alone["p99"] else 0, "x"),
        Row(
            "positions not delivered",
            max(dropped, 0),
            "",
            goal="== 0",
            met=dropped <= 0,
            detail=f"of {push_busy['expected']}",
        ),
        Row(
            "intake batches failed",
            pinger.failed,
            "",
            goal="== 0",
            met=pinger.failed == 0,
            detail=f"of {pinger.batches}",
        ),
    ]
    print_table(
        f"Load held: {SOCKETS} sockets ({STALLED} never read), {DRIVERS} drivers x 1 ping/s, "
        f"{PAGE_RATE:g} page views/s, "
        f"{SERVERS} daphne, {SECONDS:g} s (load average {load_average[0]:.1f})",
        rows,
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        raise_open_files()
        asyncio.run(_fleet(json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3])))
    else:
        main()
