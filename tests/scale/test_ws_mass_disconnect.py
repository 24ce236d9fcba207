"""Issue #3's regression: 5,000 sockets that disconnect at once leave nothing behind.

Measured with the core `RedisChannelLayer`: 5,000 simultaneous disconnects left 5,001 stale
group members (redis-py's async pool raised past 100 connections, and the group_discard calls
failed). Here a socket is never a member of a Redis group: its process is, once per driver
(tracking.consumers._DriverHub), subscribed on the pub/sub layer while at least one of its
sockets follows that driver.

One daphne on PostgreSQL + Redis; SOCKETS sockets on the pages of DELIVERIES deliveries that
share one driver (at most MAX_SOCKETS_PER_TOKEN per token). Must show: while they are open,
the driver's group has exactly 1 subscriber in Redis (the process); after every socket is
dropped in the same instant (the TCP connections aborted, as phones losing signal), the group
has none, the daphne logged no error, and a new page connects (on a token that had its full
MAX_SOCKETS_PER_TOKEN: the per-token counts went back down too) and gets the next position.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
import redis
from asgiref.sync import async_to_sync
from django.conf import settings
from django.utils import timezone

from tests.processes import ROOT
from tests.scale.support import daphne_server, ping, post, raise_open_files, seed_live
from tests.services import wait_for
from tests.tracking.test_consumer import SESSION_PREFIX
from tracking import live
from tracking.consumers import MAX_SOCKETS_PER_TOKEN
from tracking.models import Driver

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
]

SOCKETS = 5000
DELIVERIES = SOCKETS // MAX_SOCKETS_PER_TOKEN


def _subscribers(client: redis.Redis, group: str) -> int:
    """Subscribers in Redis of the pub/sub channel behind `group` (its name ends with it)."""
    channels = client.pubsub_channels(f"{SESSION_PREFIX}*{group}")
    return sum(count for _, count in client.pubsub_numsub(*channels)) if channels else 0


def test_five_thousand_sockets_dropped_at_once_leave_no_group_member_behind() -> None:
    from websockets.asyncio.client import connect

    raise_open_files()
    client = redis.Redis.from_url(settings.REDIS_URL)
    env = {"CHANNEL_LAYER_PREFIX": SESSION_PREFIX, "PORCHLIGHT_WS_MAX_PER_IP": "0", "LOG_LEVEL": "WARNING"}
    with daphne_server(**env) as server:
        tokens = seed_live(server.url, "ORD-MD", DELIVERIES, driver="drv_md")
        group = live.driver_group(Driver.objects.get(external_id="drv_md").pk)

        async def open_all() -> list[Any]:
            gate = asyncio.Semaphore(100)

            async def one(token: str) -> Any:
                async with gate:
                    socket = await connect(f"{server.ws}/ws/t/{token}/", origin=server.url, open_timeout=60)  # type: ignore[arg-type]
                    await socket.recv()  # the delivery's state: the consumer has joined the hub
                    return socket

            return await asyncio.gather(*(one(tokens[n % DELIVERIES]) for n in range(SOCKETS)))

        async def scenario() -> tuple[int, int]:
            sockets = await open_all()
            while_open = _subscribers(client, group)
            for socket in sockets:  # all in one turn of the loop: nothing closes in between
                socket.transport.abort()
            return len(sockets), while_open

        opened, while_open = async_to_sync(scenario)()
        wait_for(lambda: _subscribers(client, group) == 0, timeout=60, what="the driver's group to empty")

        async def one_more() -> dict[str, Any]:
            async with connect(f"{server.ws}/ws/t/{tokens[0]}/", origin=server.url) as socket:  # type: ignore[arg-type]
                await socket.recv()
                recorded = timezone.now().isoformat()
                await asyncio.to_thread(post, server.url, ping("drv_md", recorded, 27.5123))
                while True:
                    message = json.loads(await asyncio.wait_for(socket.recv(), 10))
                    if message.get("type") == "location" and message["recorded_at"] == recorded:
                        return message

        after = async_to_sync(one_more)()
        log = (ROOT / "var" / f"daphne-{server.url.rsplit(':', 1)[1]}.log").read_text(errors="replace")

    print(f"mass disconnect: {opened} sockets, subscribers of the driver's group while open {while_open}")
    assert opened == SOCKETS
    assert while_open == 1  # the process, not its 5,000 sockets
    assert after["lat"] == 27.5123
    assert re.findall(r'.*"level": "(?:error|critical)".*', log) == []
