"""Issue #7: two daphne processes behind the same Redis serve one set of viewers (and T2: the
token-miss throttle counts across both).

Every test starts two real daphne processes on the production stack (PostgreSQL, Redis as
channel layer and cache); events go in through the signed intake of either one.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.cache import cache

from tests.scale.support import at, daphne_server, ping, post, raise_open_files, seed_live, status
from tests.tracking.test_consumer import SESSION_PREFIX
from tracking import views

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres, pytest.mark.redis]

ENV = {"CHANNEL_LAYER_PREFIX": SESSION_PREFIX, "PORCHLIGHT_WS_MAX_PER_IP": "0"}


async def _next(socket: Any, want: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(await asyncio.wait_for(socket.recv(), deadline - time.monotonic()))
        if message["type"] == want:
            return dict(message)


async def _quiet(socket: Any, seconds: float = 0.5) -> list[dict[str, Any]]:
    got = []
    try:
        while True:
            got.append(json.loads(await asyncio.wait_for(socket.recv(), seconds)))
    except TimeoutError:
        return got


def test_viewers_spread_over_two_daphnes_all_get_what_is_posted_to_either() -> None:
    from websockets.asyncio.client import connect

    raise_open_files()
    with daphne_server(**ENV) as one, daphne_server(**ENV) as two:
        servers = [one, two]
        tokens = seed_live(one.url, "ORD-2D", 20, driver="drv_2d")

        async def scenario() -> None:
            # 60 viewers: three per delivery, alternating between the processes.
            viewers = []
            for n in range(60):
                server = servers[n % 2]
                token = tokens[n % 20]
                viewers.append((token, await connect(f"{server.ws}/ws/t/{token}/", origin=server.url)))  # type: ignore[arg-type]
            for _, socket in viewers:
                await _next(socket, "eta")
            for number, (source, lat) in enumerate([(one, 27.51), (two, 27.52)]):
                await asyncio.to_thread(post, source.url, ping("drv_2d", at(number - 2), lat))
                got = await asyncio.gather(*(_next(socket, "location") for _, socket in viewers))
                assert {m["lat"] for m in got} == {lat}
            # A status of one delivery, posted to the second process, reaches its three viewers only.
            await asyncio.to_thread(post, two.url, status("ORD-2D-7", "arriving", 0))
            mine = [socket for token, socket in viewers if token == tokens[7]]
            others = [socket for token, socket in viewers if token != tokens[7]]
            assert [(await _next(s, "status"))["status"] for s in mine] == ["arriving"] * 3
            assert not any(await asyncio.gather(*(_quiet(s) for s in others)))
            for _, socket in viewers:
                await socket.close()

        async_to_sync(scenario)()


def _misses_until_refused(servers: list[str], *, spoof: bool) -> list[int]:
    """Unknown tokens, alternating between the servers, from one client; their statuses."""
    statuses = []
    with httpx.Client(timeout=10) as client:
        for n in range(90):
            headers = {"X-Forwarded-For": f"10.9.{n}.1"} if spoof else {}
            url = f"{servers[n % len(servers)]}/t/{secrets.token_urlsafe(24)}/"
            statuses.append(client.get(url, headers=headers).status_code)
    return statuses


@pytest.mark.slow
def test_the_token_miss_throttle_counts_across_both_daphnes_and_a_local_cache_would_not() -> None:
    limit = int(getattr(settings, "PORCHLIGHT_TOKEN_MISS_LIMIT", views.MISS_LIMIT))
    cache.clear()  # this client's misses from earlier tests
    try:
        with daphne_server(**ENV) as one, daphne_server(**ENV) as two:
            shared = _misses_until_refused([one.url, two.url], spoof=True)
        cache.clear()
        # Control: the same two processes with a per-process cache (embedded mode, same database).
        local = {**ENV, "REDIS_URL": ""}
        with daphne_server(**local) as one, daphne_server(**local) as two:
            separate = _misses_until_refused([one.url, two.url], spoof=False)
    finally:
        cache.clear()
    print(f"T2: misses let through: shared cache {shared.count(404)}, per-process {separate.count(404)}")
    assert set(shared) <= {404, 429}
    assert shared[:limit] == [404] * limit and set(shared[limit:]) == {429}
    assert set(separate) <= {404, 429}
    assert separate.count(404) == 2 * limit  # each process counted only its own half
