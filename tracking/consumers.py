"""The tracking page's socket, `/ws/t/<token>/`: read-only, relays what tracking.live sends.

The client has nothing to say: a frame that is too large or comes too often closes the socket
(1009 / 1008). An unknown, malformed, revoked or expired token is refused before accept, as is
a token that already has too many sockets open in this process.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import Counter, defaultdict
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from tracking import live
from tracking.customer import delivery_for_token, delivery_language

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 256
# A few stray frames are tolerated (a browser extension, a proxy's keepalive); a stream is not.
MAX_FRAMES_PER_WINDOW = 3
FRAME_WINDOW_SECONDS = 1.0
# One link is one household; more than this many tabs on one token in one process is a flood.
MAX_SOCKETS_PER_TOKEN = 20
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009

_open_per_token: Counter[str] = Counter()


class _DriverHub:
    """One listener per process and driver: the process, not each socket, is in `driver.<pk>`.

    A ping arrives here once per process (one group message, one decode) and is written
    straight to the local sockets that follow that driver, with no per-socket channel queue,
    task wake-up or handler dispatch: that is most of what stock Channels spends per recipient.
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.channel = ""
        self.followers: dict[int, set[TrackingConsumer]] = defaultdict(set)
        self.task: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()

    async def follow(self, driver_id: int, consumer: TrackingConsumer) -> None:
        async with self.lock:
            if not self.channel:
                self.channel = await self.layer.new_channel("driver-hub.")
                self.task = asyncio.get_running_loop().create_task(self._listen())
            first = not self.followers[driver_id]
            self.followers[driver_id].add(consumer)
            if first:
                await self.layer.group_add(live.driver_group(driver_id), self.channel)

    async def unfollow(self, driver_id: int, consumer: TrackingConsumer) -> None:
        async with self.lock:
            followers = self.followers.get(driver_id)
            if followers is None:
                return
            followers.discard(consumer)
            if not followers:
                del self.followers[driver_id]
                await self.layer.group_discard(live.driver_group(driver_id), self.channel)

    async def _listen(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
                if message.get("type") == "driver.location":
                    for consumer in list(self.followers.get(message.get("driver", 0), ())):
                        await consumer.relay_location(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                # One bad message or a layer hiccup must not stop positions for the process.
                logger.exception("driver hub: message not relayed")
                await asyncio.sleep(0.1)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _DriverHub] = weakref.WeakKeyDictionary()


def _hub(layer: Any) -> _DriverHub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None or hub.layer is not layer:
        hub = _hubs[loop] = _DriverHub(layer)
    return hub


@database_sync_to_async
def _load(token: str, requested_language: str | None) -> tuple[int, str, dict[str, Any]] | None:
    delivery = delivery_for_token(token=token)
    if delivery is None:
        return None
    return delivery.pk, delivery_language(delivery, requested_language), live.delivery_state(delivery)


class TrackingConsumer(AsyncWebsocketConsumer):
    token = ""
    counted = False
    language = "en"
    delivery_group = ""
    driver_id: int | None = None
    closed = False
    live_position = False
    position_ts = 0.0
    frames: list[float]

    async def connect(self) -> None:
        self.frames = []
        self.token = str(self.scope["url_route"]["kwargs"].get("token", ""))
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        loaded = await _load(self.token, (query.get("lang") or [None])[0])
        if loaded is None or _open_per_token[self.token] >= MAX_SOCKETS_PER_TOKEN:
            await self.close()  # before accept: the handshake is answered 403
            return
        _open_per_token[self.token] += 1
        self.counted = True
        delivery_id, self.language, state = loaded
        self.delivery_group = live.delivery_group(delivery_id)
        await self.channel_layer.group_add(self.delivery_group, self.channel_name)
        await self.accept()
        await self.delivery_state(state)

    async def disconnect(self, code: int) -> None:
        self.closed = True
        if self.counted:
            self.counted = False
            _open_per_token[self.token] -= 1
            if _open_per_token[self.token] <= 0:
                del _open_per_token[self.token]
        if self.delivery_group:
            await self.channel_layer.group_discard(self.delivery_group, self.channel_name)
        await self._follow_driver(None)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > MAX_FRAME_BYTES:
            await self.close(code=CLOSE_TOO_BIG)
            return
        now = time.monotonic()
        self.frames = [t for t in self.frames if now - t < FRAME_WINDOW_SECONDS] + [now]
        if len(self.frames) > MAX_FRAMES_PER_WINDOW:
            await self.close(code=CLOSE_POLICY)

    # --- group messages (tracking.live) ---------------------------------------------------

    async def delivery_state(self, event: dict[str, Any]) -> None:
        self.live_position = bool(event.get("live"))
        await self._follow_driver(event.get("driver") if self.live_position else None)
        texts = event["texts"].get(self.language) or next(iter(event["texts"].values()))
        for text in texts:
            await self.send(text_data=text)
        position_ts = event.get("position_ts")
        # Never send a position older than one this page already has.
        if event.get("location") and position_ts and position_ts >= self.position_ts:
            self.position_ts = position_ts
            await self.send(text_data=event["location"])

    async def relay_location(self, event: dict[str, Any]) -> None:
        """A driver ping from the process's hub, written straight to this socket."""
        # A ping can race the message that ended the privacy window; check it again here.
        if not self.live_position or event["ts"] < self.position_ts or self.closed:
            return
        self.position_ts = event["ts"]
        try:
            await self.base_send({"type": "websocket.send", "text": event["text"]})
        except Exception:  # the socket went away under us; disconnect() cleans up
            self.closed = True

    async def _follow_driver(self, driver_id: int | None) -> None:
        if driver_id == self.driver_id:
            return
        hub = _hub(self.channel_layer)
        if self.driver_id:
            await hub.unfollow(self.driver_id, self)
        if driver_id:
            await hub.follow(driver_id, self)
        self.driver_id = driver_id
