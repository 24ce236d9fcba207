"""S2, scaled down for CI: viewers that never read their sockets do not hurt the others.

One daphne on the production stack; 200 viewers of 10 live deliveries that share a driver, 20
of them raw TCP clients that finish the handshake and never read again (a frozen tab). The
driver's group gets 10 positions a second for 20 s, each padded to 4 KiB so that 20 s fill
what minutes of real 150-byte pings would (the hub relays the text as it comes; the page
ignores keys it does not know). Must show: the healthy viewers get every position, p95 under
1 s; each slow socket is closed as over capacity once daphne holds more than the bound for it
(PORCHLIGHT_WS_SEND_BUFFER_BYTES, 64 KiB here), and counted in the log; daphne's memory stays
bounded. The full-size figures are in `python -m bench load`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings

from bench.common import percentile
from tests.processes import ROOT
from tests.scale.support import Server, daphne_server, raise_open_files, seed_live
from tests.tracking.test_consumer import SESSION_PREFIX
from tracking import live
from tracking.models import Driver

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
]

VIEWERS, SLOW, DELIVERIES = 200, 20, 10
RATE, SECONDS, PAD = 10, 20, 4096
BOUND = 64 * 1024


def _stalled_viewer(server: Server, token: str) -> socket.socket:
    """A websocket client that completes the handshake and then never reads."""
    port = int(server.url.rsplit(":", 1)[1])
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    raw.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sendall(
        (
            f"GET /ws/t/{token}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {server.url}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += raw.recv(1)  # byte by byte: leave every frame after the handshake unread
    assert b" 101 " in head.split(b"\r\n", 1)[0], head
    return raw


def _over_capacity_lines(server: Server) -> int:
    port = server.url.rsplit(":", 1)[1]
    log = Path(ROOT / "var" / f"daphne-{port}.log").read_text(errors="replace")
    return len(re.findall(r"websocket over capacity", log))


def test_viewers_that_never_read_are_closed_as_over_capacity_and_the_others_keep_up() -> None:
    from channels_redis.pubsub import RedisPubSubChannelLayer
    from websockets.asyncio.client import connect

    raise_open_files()
    env = {
        "CHANNEL_LAYER_PREFIX": SESSION_PREFIX,
        "PORCHLIGHT_WS_MAX_PER_IP": "0",
        "PORCHLIGHT_WS_SEND_BUFFER_BYTES": str(BOUND),
        "LOG_LEVEL": "WARNING",
    }
    with daphne_server(**env) as server:
        tokens = seed_live(server.url, "ORD-S2", DELIVERIES, driver="drv_s2")
        driver = Driver.objects.get(external_id="drv_s2")
        stalled = [_stalled_viewer(server, tokens[n % DELIVERIES]) for n in range(SLOW)]
        latencies: list[float] = []
        counts: list[int] = []
        # Frames written straight to the kernel (config/wsserver.py _send_now) must never
        # overtake ones still queued in daphne: each viewer sees the positions in order.
        out_of_order: list[int] = []

        async def scenario() -> float:
            sockets = [
                await connect(f"{server.ws}/ws/t/{tokens[n % DELIVERIES]}/", origin=server.url, max_size=None)  # type: ignore[arg-type]
                for n in range(VIEWERS - SLOW)
            ]
            layer = RedisPubSubChannelLayer(hosts=[settings.REDIS_URL], prefix=SESSION_PREFIX)
            before = server.rss_mb()

            async def watch(ws: Any) -> None:
                got, last = 0, 0.0
                async for text in ws:
                    message = json.loads(text)
                    if message.get("type") == "location" and "pad" in message:
                        sent = datetime.fromisoformat(message["recorded_at"]).timestamp()
                        latencies.append(time.time() - sent)
                        if sent < last:
                            out_of_order.append(got)
                        last = sent
                        got += 1
                        if got == RATE * SECONDS:
                            break
                counts.append(got)

            watchers = [asyncio.create_task(watch(ws)) for ws in sockets]
            started = time.monotonic()
            for n in range(RATE * SECONDS):
                await asyncio.sleep(max(0.0, started + n / RATE - time.monotonic()))
                now = datetime.now(UTC)
                text = json.dumps(
                    {"type": "location", "lat": 27.5, "lon": -99.5, "heading": None,
                     "recorded_at": now.isoformat(), "pad": "x" * PAD}
                )  # fmt: skip
                await layer.group_send(
                    live.driver_group(driver.pk),
                    {"type": "driver.location", "driver": driver.pk, "text": text, "ts": now.timestamp()},
                )
            await asyncio.wait(watchers, timeout=30)
            grown = server.rss_mb() - before
            for ws in sockets:
                await ws.close()
            await layer.flush()
            return grown

        grown = async_to_sync(scenario)()
        closed = _over_capacity_lines(server)
        for raw in stalled:
            raw.close()

    healthy = VIEWERS - SLOW
    p95 = percentile(latencies, 95)
    print(f"S2: p95 {p95 * 1000:.0f} ms, over capacity {closed}, RSS +{grown:.1f} MB")
    assert counts == [RATE * SECONDS] * healthy  # every position reached every healthy viewer
    assert out_of_order == []
    assert p95 < 1.0, f"healthy viewers' p95 {p95:.2f} s"
    assert closed == SLOW  # each stalled socket closed once, and only those
    # Without the bound, daphne would hold ~SLOW x RATE x SECONDS x PAD = 16 MB for them.
    assert grown < 8, f"daphne grew {grown:.1f} MB"
