"""S3: the channel layer's Redis is killed (-9) and comes back; every open page shows the
server's latest state again without a reload.

A redis-server of the test's own on a free port (the shared one is never touched) is the
daphne process's channel layer, cache and broker. 200 asyncio viewers of 20 live deliveries;
while Redis is down a status and a position go in through the intake (stored, but their
pushes are lost), and after Redis is back nothing else happens: each viewer must end up
showing that status and that position, because the process notices that its layer came back
and sends every socket its delivery's state again (tracking.consumers, _DriverHub.watch).
Then a new position must reach every viewer (the layer's subscriptions were restored).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from tests.processes import free_port, port_open
from tests.scale.support import at, daphne_server, ping, post, raise_open_files, seed_live, status
from tests.services import need, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.chaos,
]

VIEWERS, DELIVERIES = 200, 20


class OwnRedis:
    """A throwaway redis-server on a free port, killed with -9 and started again on demand."""

    def __init__(self, binary: str) -> None:
        self.port = free_port()
        self.command = [binary, "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), what="redis-server up")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@contextmanager
def own_redis() -> Iterator[OwnRedis]:
    import shutil

    binary = shutil.which("redis-server")
    need(binary is not None, "redis-server (apt-get install redis-server)")
    redis = OwnRedis(str(binary))
    redis.start()
    try:
        yield redis
    finally:
        if redis.proc is not None and redis.proc.poll() is None:
            redis.proc.terminate()
            redis.proc.wait()


def test_after_the_channel_layer_redis_is_killed_and_back_every_page_shows_the_latest_state() -> None:
    from websockets.asyncio.client import connect

    raise_open_files()
    with own_redis() as redis:
        env = {"REDIS_URL": f"redis://127.0.0.1:{redis.port}/0", "PORCHLIGHT_WS_MAX_PER_IP": "0"}
        with daphne_server(**env) as server:
            tokens = seed_live(server.url, "ORD-S3", DELIVERIES, driver="drv_s3")
            shown: list[dict[str, Any]] = [{} for _ in range(VIEWERS)]

            async def scenario() -> dict[str, float]:
                sockets = [
                    await connect(f"{server.ws}/ws/t/{tokens[n % DELIVERIES]}/", origin=server.url)  # type: ignore[arg-type]
                    for n in range(VIEWERS)
                ]

                async def watch(index: int, socket: Any) -> None:
                    async for text in socket:  # what the page script keeps of each message
                        message = json.loads(text)
                        shown[index][message["type"]] = message

                def showing(status_value: str, lat: float) -> bool:
                    return all(
                        s.get("status", {}).get("status") == status_value
                        and s.get("location", {}).get("lat") == lat
                        for s in shown
                    )

                watchers = [asyncio.create_task(watch(i, s)) for i, s in enumerate(sockets)]
                await asyncio.to_thread(post, server.url, ping("drv_s3", at(-3), 27.51))
                await _until(lambda: showing("out_for_delivery", 27.51), 10)

                redis.kill()
                down = time.monotonic()
                # Stored while Redis is down; their pushes are lost.
                events = [status(f"ORD-S3-{n}", "arriving", -2) for n in range(DELIVERIES)]
                await asyncio.to_thread(post, server.url, *events, ping("drv_s3", at(-2), 27.52))
                await asyncio.sleep(max(0.0, down + 3 - time.monotonic()))  # a 3 s outage
                assert showing("out_for_delivery", 27.51)  # nothing got through meanwhile
                await asyncio.to_thread(redis.start)
                back = time.monotonic()
                await _until(lambda: showing("arriving", 27.52), 20)
                healed = time.monotonic() - back

                await asyncio.to_thread(post, server.url, ping("drv_s3", at(-1), 27.53))
                await _until(lambda: showing("arriving", 27.53), 10)
                assert all(s.state.name == "OPEN" for s in sockets)
                await asyncio.gather(*(s.close() for s in sockets))
                for task in watchers:
                    task.cancel()
                return {"healed": healed}

            figures = async_to_sync(scenario)()
    print(f"S3: every page showed the latest state {figures['healed']:.1f} s after Redis was back")


async def _until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.05)
