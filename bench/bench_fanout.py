"""Fan-out: one driver ping to 1,000 and 5,000 open tracking sockets, time until the last has it.

Three servers, measured in the same run and interleaved:
- ours: the production stack (PostgreSQL, channels-redis pub/sub, N daphne processes); the
  ping goes in through the signed intake and reaches every eligible viewer (one socket per
  delivery, all deliveries served by that driver and arriving) through ONE group message.
- R1: a bare `websockets` server that broadcasts a message to every socket it holds.
- R2: the stock Channels way: one consumer per socket, all in one group, RedisPubSubChannelLayer,
  the same N daphne processes; triggered by one group_send.
Each is measured with one daphne (like for like with R1, a one-process server, and with the
issue's own figures) and with two (BENCH_FANOUT_SERVERS, "1,2"); each count has its goal row.
Goal (issue 3): ours at most 0.5x R2. The clock runs from the trigger (our intake POST, R1's
control frame, R2's group_send) to the moment the last socket received the message; sockets
that never got it within the timeout are counted as lost.

Then, sustained: 500 drivers each pinging once a second (batched every 100 ms into the intake),
one viewer each, for 30 s: ping-to-socket p99 (goal < 250 ms) and pings dropped (goal 0).

Knobs (environment): BENCH_FANOUT_SOCKETS ("1000,5000"), BENCH_FANOUT_SERVERS ("1,2"),
BENCH_FANOUT_CLIENTS (2 client processes),
BENCH_ROUNDS (3), BENCH_FANOUT_TIMEOUT (30),
BENCH_SUSTAINED_DRIVERS (500), BENCH_SUSTAINED_SECONDS (30; 0 skips it).
Sub-commands used internally: `client <spec> <out>` (the socket fleet) and `bare <port>` (R1).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIZES = [int(n) for n in os.environ.get("BENCH_FANOUT_SOCKETS", "1000,5000").split(",") if n.strip()]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
TIMEOUT = float(os.environ.get("BENCH_FANOUT_TIMEOUT", "30"))
PREFIX = f"benchfan{os.getpid()}"
MARK = 12.3456  # the latitude of the measured ping: what the client fleet waits for
# Daphne processes for ours and R2, each count measured in turn. One is like for like with R1
# (a bare server is one process) and with the figures (R2/R1 = 7.6 at 1,000 sockets);
# two is the production stack, where R2 spreads its per-socket work over both cores.
SERVER_COUNTS = [int(n) for n in os.environ.get("BENCH_FANOUT_SERVERS", "1,2").split(",") if n.strip()]
# Client processes the sockets are spread over: one Python process reads about 25 frames a
# millisecond, which is R1's whole figure at 1,000 sockets.
CLIENTS = int(os.environ.get("BENCH_FANOUT_CLIENTS", "2"))
SUSTAINED_DRIVERS = int(os.environ.get("BENCH_SUSTAINED_DRIVERS", "500"))
SUSTAINED_SECONDS = float(os.environ.get("BENCH_SUSTAINED_SECONDS", "30"))


# --- the client fleet (a separate process) ---------------------------------------------------


async def _fleet(spec: dict[str, Any], out: Path) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    sockets: list[Any] = []
    gate = asyncio.Semaphore(100)

    async def open_one(url: str, origin: str) -> None:
        # A server busy with thousands of handshakes may drop one (daphne gives the app 5 s to
        # accept): try again a few times, as a browser's reconnect would.
        for attempt in range(8):
            try:
                async with gate:
                    socket = await connect(
                        url, origin=origin, compression=None, open_timeout=60, max_queue=None
                    )  # type: ignore[arg-type]
                sockets.append(socket)
                return
            except (OSError, TimeoutError, InvalidHandshake, InvalidStatus):
                if attempt == 7:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))

    await asyncio.gather(*(open_one(url, origin) for url, origin in spec["targets"]))
    received: dict[int, float] = {}

    async def watch(index: int, socket: Any) -> None:
        async for text in socket:
            if spec["needle"] in text:
                received[index] = time.time()
                return

    if spec.get("sustain"):
        await _sustain(sockets, spec, out)
        return
    watchers = [asyncio.create_task(watch(i, s)) for i, s in enumerate(sockets)]
    Path(spec["ready"]).write_text("ready")
    await asyncio.wait(watchers, timeout=spec["timeout"])
    out.write_text(json.dumps({"times": list(received.values()), "sockets": len(sockets)}))
    for task in watchers:
        task.cancel()
    await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)


async def _sustain(sockets: list[Any], spec: dict[str, Any], out: Path) -> None:
    """Every location message on every socket: its age on arrival, and how many per socket."""
    latencies: list[float] = []
    counts = [0] * len(sockets)

    async def watch(index: int, socket: Any) -> None:
        async for text in socket:
            message = json.loads(text)
            if message.get("type") == "location":
                latencies.append(time.time() - datetime.fromisoformat(message["recorded_at"]).timestamp())
                counts[index] += 1

    watchers = [asyncio.create_task(watch(i, s)) for i, s in enumerate(sockets)]
    Path(spec["ready"]).write_text("ready")
    await asyncio.wait(watchers, timeout=spec["sustain"])
    out.write_text(json.dumps({"latencies": latencies, "counts": counts, "sockets": len(sockets)}))
    for task in watchers:
        task.cancel()
    await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)


@contextmanager
def fleet(targets: list[tuple[str, str]], needle: str, *, sustain: float = 0) -> Iterator[Any]:
    """Open the sockets from CLIENTS other processes, each a share of them; yields a function
    that waits for the results, merged."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="porchlight-fanout-") as folder, ExitStack() as stack:
        shares = [targets[n::CLIENTS] for n in range(CLIENTS)]
        runs = []
        for n, share in enumerate(s for s in shares if s):
            spec_path, out, ready = (
                Path(folder) / f"{name}-{n}" for name in ("spec.json", "out.json", "ready")
            )
            spec = {
                "targets": share,
                "needle": needle,
                "timeout": TIMEOUT,
                "ready": str(ready),
                "sustain": sustain,
            }
            spec_path.write_text(json.dumps(spec))
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.bench_fanout", "client", str(spec_path), str(out)], cwd=ROOT
            )
            stack.callback(_stop, proc)
            runs.append((proc, out, ready))
        deadline = time.monotonic() + 300
        while not all(ready.exists() for _, _, ready in runs):
            if any(proc.poll() is not None for proc, _, _ in runs) or time.monotonic() > deadline:
                raise RuntimeError("the socket fleet did not connect")
            time.sleep(0.05)
        time.sleep(0.5)  # let the servers finish the connect-time messages

        def results() -> dict[str, Any]:
            merged: dict[str, Any] = {}
            for proc, out, _ in runs:
                proc.wait(timeout=TIMEOUT + sustain + 60)
                for key, value in json.loads(out.read_text()).items():
                    merged[key] = merged.get(key, 0 if isinstance(value, int) else []) + value
            return merged

        yield results


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _measure(started: float, results: dict[str, Any], size: int) -> dict[str, float]:
    times = results["times"]
    return {
        "last_ms": (max(times) - started) * 1000 if times else float("nan"),
        "first_ms": (min(times) - started) * 1000 if times else float("nan"),
        "lost": size - len(times),
        "connected": results["sockets"],
    }


# --- R1: a bare websockets broadcast server --------------------------------------------------


async def _bare(port: int) -> None:
    from websockets.asyncio.server import broadcast, serve

    clients: set[Any] = set()

    async def handler(socket: Any) -> None:
        if socket.request.path == "/control":
            async for text in socket:
                broadcast(clients, text)
            return
        clients.add(socket)
        try:
            await socket.wait_closed()
        finally:
            clients.discard(socket)

    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=None):
        await asyncio.Future()


# --- R2: the stock Channels consumer (loaded by daphne as bench.bench_fanout:stock_application) ---


def _stock_application() -> Any:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    import django

    django.setup()
    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.urls import path

    class StockConsumer(AsyncWebsocketConsumer):
        async def connect(self) -> None:
            await self.channel_layer.group_add("stock", self.channel_name)
            await self.accept()

        async def disconnect(self, code: int) -> None:
            await self.channel_layer.group_discard("stock", self.channel_name)

        async def bench_message(self, event: dict[str, Any]) -> None:
            await self.send(text_data=event["text"])

    return ProtocolTypeRouter({"websocket": URLRouter([path("ws/stock/", StockConsumer.as_asgi())])})


def __getattr__(name: str) -> Any:  # daphne imports the attribute; Django loads only then
    if name == "stock_application":
        return _stock_application()
    raise AttributeError(name)


# --- the benchmark ---------------------------------------------------------------------------


def _at(minutes: float) -> str:
    return (datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=minutes)).isoformat()


_SEED = """
from django.utils import timezone
from tracking.models import Delivery, Driver
driver, _ = Driver.objects.get_or_create(external_id="fan_drv", defaults={"name": "Sam"})
now = timezone.now()
Delivery.objects.bulk_create(
    Delivery(reference=f"FAN-{n}", customer_name="A", phone="+19565550123", address_line1="1 Main St",
             city="Laredo", postcode="78040", country="US", lat=27.5, lon=-99.5, details_at=now,
             status="arriving", status_at=now, driver=driver)
    for n in range(COUNT)
)
"""


_SEED_SUSTAINED = """
from django.utils import timezone
from tracking.models import Delivery, Driver
now = timezone.now()
Driver.objects.bulk_create(Driver(external_id=f"sus_{n}", name="Sam") for n in range(COUNT))
drivers = {d.external_id: d for d in Driver.objects.filter(external_id__startswith="sus_")}
Delivery.objects.bulk_create(
    Delivery(reference=f"SUS-{n}", customer_name="A", phone="+19565550123", address_line1="1 Main St",
             city="Laredo", postcode="78040", country="US", lat=27.5, lon=-99.5, details_at=now,
             status="arriving", status_at=now, driver=drivers[f"sus_{n}"])
    for n in range(COUNT)
)
"""


def _sustained(base_urls: list[str], env: dict[str, str], db_url: str) -> list[Any]:
    """SUSTAINED_DRIVERS drivers each pinging once a second (in batches every 100 ms, as a routing
    backend would send them), one viewer each, for SUSTAINED_SECONDS."""
    from bench.common import Row, event_request, manage, percentile, post, sql

    manage(["shell", "-c", _SEED_SUSTAINED.replace("COUNT", str(SUSTAINED_DRIVERS))], env=env)
    rows = sql(
        db_url, "SELECT tracking_token FROM tracking_delivery WHERE reference LIKE 'SUS-%%' ORDER BY id"
    )
    targets = [
        (
            base_urls[i % len(base_urls)].replace("http", "ws") + f"/ws/t/{token}/",
            base_urls[i % len(base_urls)],
        )
        for i, (token,) in enumerate(rows)
    ]
    sent, failed, ticks = 0, 0, int(SUSTAINED_SECONDS * 10)
    with fleet(targets, needle="", sustain=SUSTAINED_SECONDS + 5) as wait:
        start = time.monotonic()
        for tick in range(ticks):
            delay = start + tick / 10 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = datetime.now(UTC).isoformat()
            pings = [
                {
                    "id": f"sus_{n}_{tick}",
                    "type": "driver.location",
                    "occurred_at": now,
                    "data": {
                        "driver_id": f"sus_{n}",
                        "lat": 27.5 + tick / 1e4,
                        "lon": -99.5,
                        "recorded_at": now,
                    },
                }
                for n in range(tick % 10, SUSTAINED_DRIVERS, 10)
            ]
            status, _ = post(base_urls[tick % len(base_urls)], event_request({"events": pings}))
            sent += len(pings)
            failed += status != 200
        results = wait()
    latencies = [v * 1000 for v in results["latencies"]]
    received = sum(results["counts"])
    p99 = percentile(latencies, 99)
    shape = f"{SUSTAINED_DRIVERS} drivers x 1/s x {SUSTAINED_SECONDS:g} s"
    return [
        Row("sustained: pings sent", sent, "", detail=shape),
        Row("sustained: intake batches failed", failed, "", goal="== 0", met=failed == 0),
        Row("sustained: ping-to-socket p50", percentile(latencies, 50), "ms"),
        Row("sustained: ping-to-socket p99", p99, "ms", goal="< 250 ms", met=bool(latencies) and p99 < 250),
        Row("sustained: dropped", sent - received, "", goal="== 0", met=sent == received),
    ]


NAMES = ("R1 bare websockets", "R2 stock Channels", "ours")


def _compare(
    servers: int,
    ours: list[str],
    stock: list[str],
    tokens: list[str],
    bare_port: int,
    pings: Iterator[int],
    results: dict[tuple[int, str, int], list[dict[str, float]]],
) -> None:
    """Every size, ROUNDS rounds of R1, R2 and ours interleaved, with `servers` daphnes each."""
    from bench.common import REDIS_URL, event_request, post

    def run_ours(size: int) -> dict[str, float]:
        targets = [
            (ours[i % servers].replace("http", "ws") + f"/ws/t/{token}/", ours[i % servers])
            for i, token in enumerate(tokens[:size])
        ]
        n = next(pings)
        # A new position each round: a socket also gets the driver's last one on connect.
        lat = round(MARK + n / 1000, 4)
        ping = {
            "id": f"fan_ping_{servers}_{size}_{n}", "type": "driver.location", "occurred_at": _at(0),
            "data": {"driver_id": "fan_drv", "lat": lat, "lon": 1.0, "recorded_at": _at(n / 1000)},
        }  # fmt: skip
        with fleet(targets, needle=f'"lat": {lat}') as wait:
            started = time.time()
            post(ours[0], event_request(ping))
            answered = time.time()
            return {**_measure(started, wait(), size), "ack_ms": (answered - started) * 1000}

    def run_bare(size: int) -> dict[str, float]:
        from websockets.sync.client import connect

        url = f"ws://127.0.0.1:{bare_port}"
        with (
            fleet([(f"{url}/s", url)] * size, needle=str(MARK)) as wait,
            connect(f"{url}/control") as control,
        ):
            started = time.time()
            control.send(json.dumps({"type": "location", "lat": MARK, "lon": 1.0}))
            return _measure(started, wait(), size)

    def run_stock(size: int) -> dict[str, float]:
        from channels_redis.pubsub import RedisPubSubChannelLayer

        targets = [
            (stock[i % servers].replace("http", "ws") + "/ws/stock/", stock[i % servers]) for i in range(size)
        ]
        with fleet(targets, needle=str(MARK)) as wait:
            layer = RedisPubSubChannelLayer(hosts=[REDIS_URL], prefix=PREFIX)
            message = {"type": "bench.message", "text": json.dumps({"type": "location", "lat": MARK})}

            async def send() -> float:
                started = time.time()
                await layer.group_send("stock", message)
                await layer.flush()
                return started

            started = asyncio.run(send())
            return _measure(started, wait(), size)

    for warm_up in (run_bare, run_stock, run_ours):  # first requests, imports, connections
        warm_up(10)
    runs = dict(zip(NAMES, (run_bare, run_stock, run_ours), strict=True))
    for size in SIZES:
        for _ in range(ROUNDS):
            for name, run in runs.items():
                results.setdefault((servers, name, size), []).append(run(size))
                time.sleep(1)  # let the last fleet's sockets close on the servers


def _seed(env: dict[str, str], count: int) -> None:
    """Deliveries that are all arriving with one driver, written directly: the measured ping
    goes through the intake, the set-up does not need to."""
    from bench.common import manage

    manage(["shell", "-c", _SEED.replace("COUNT", str(count))], env=env)


def main() -> None:
    from bench.common import (
        Row,
        daphnes,
        free_port,
        fresh_database,
        median,
        port_open,
        print_table,
        process,
        redis_flush,
        require,
        server_env,
        sql,
    )

    require(postgres=True, redis=True)
    redis_flush()
    results: dict[tuple[int, str, int], list[dict[str, float]]] = {}
    pings = iter(range(1, 10**6))
    sustained: list[Row] = []
    with fresh_database("fanout") as db_url:
        env = server_env(database_url=db_url, CHANNEL_LAYER_PREFIX=PREFIX, PORCHLIGHT_WS_MAX_PER_IP="0")
        bare_port = free_port()
        with process(
            [sys.executable, "-m", "bench.bench_fanout", "bare", str(bare_port)],
            env=dict(os.environ),
            name="fanout-bare",
            ready=lambda: port_open(bare_port),
        ):
            _seed(env, max(SIZES))
            tokens = [
                row[0] for row in sql(db_url, "SELECT tracking_token FROM tracking_delivery ORDER BY id")
            ]
            for servers in SERVER_COUNTS:
                with (
                    daphnes(servers, env=env, name=f"fanout-{servers}") as ours,
                    daphnes(
                        servers,
                        env=env,
                        app="bench.bench_fanout:stock_application",
                        name=f"fanout-stock-{servers}",
                    ) as stock,
                ):
                    _compare(servers, ours, stock, tokens, bare_port, pings, results)
                    if servers == max(SERVER_COUNTS) and SUSTAINED_SECONDS > 0:
                        sustained = _sustained(ours, env, db_url)

    rows: list[Row] = []
    for servers in SERVER_COUNTS:
        for size in SIZES:
            medians = {name: median([r["last_ms"] for r in results[(servers, name, size)]]) for name in NAMES}
            prefix = f"{size} sockets, {servers} daphne"
            for name in NAMES:
                runs = results[(servers, name, size)]
                lost = sum(int(r["lost"]) for r in runs)
                first = median([r["first_ms"] for r in runs])
                ack = ""
                if name == "ours":
                    ack = f"intake answered in {median([r['ack_ms'] for r in runs]):.0f} ms; "
                where = "1 process" if name == "R1 bare websockets" else f"{servers} daphne"
                rows.append(
                    Row(f"{size} sockets, {name} ({where})", medians[name], "ms",
                        detail=f"{ack}first socket {first:.0f} ms; lost {lost}, {len(runs)} rounds")
                )  # fmt: skip
            ratio = medians["ours"] / medians["R2 stock Channels"]
            lost_ours = sum(int(r["lost"]) for r in results[(servers, "ours", size)])
            rows.append(
                Row(f"{prefix}: ours vs R2", ratio, "x", goal="<= 0.5x", met=ratio <= 0.5 and not lost_ours)
            )
            rows.append(Row(f"{prefix}: ours vs R1", medians["ours"] / medians["R1 bare websockets"], "x"))
    print_table("Fan-out: one ping to every open socket (time to the last socket)", rows)
    if sustained:
        print_table(
            f"Sustained pings on the production stack ({max(SERVER_COUNTS)} daphne, channels-redis pub/sub)",
            sustained,
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        asyncio.run(_fleet(json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3])))
    elif len(sys.argv) > 1 and sys.argv[1] == "bare":
        asyncio.run(_bare(int(sys.argv[2])))
    else:
        main()
