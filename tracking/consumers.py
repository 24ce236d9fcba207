"""The tracking page's socket, `/ws/t/<token>/`: read-only, relays what tracking.live sends.

The client has nothing to say: a frame that is too large or comes too often closes the socket
(1009 / 1008). An unknown, malformed, revoked or expired token is refused before accept, as is
a token that already has too many sockets open in this process.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from tracking import live
from tracking.customer import delivery_for_token, delivery_language

MAX_FRAME_BYTES = 256
# A few stray frames are tolerated (a browser extension, a proxy's keepalive); a stream is not.
MAX_FRAMES_PER_WINDOW = 3
FRAME_WINDOW_SECONDS = 1.0
# One link is one household; more than this many tabs on one token in one process is a flood.
MAX_SOCKETS_PER_TOKEN = 20
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009

_open_per_token: Counter[str] = Counter()


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
    driver_group = ""
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

    async def driver_location(self, event: dict[str, Any]) -> None:
        # A ping can race the message that ended the privacy window; check it again here.
        if not self.live_position or event["ts"] < self.position_ts:
            return
        self.position_ts = event["ts"]
        await self.send(text_data=event["text"])

    async def _follow_driver(self, driver_id: int | None) -> None:
        wanted = live.driver_group(driver_id) if driver_id else ""
        if wanted == self.driver_group:
            return
        if self.driver_group:
            await self.channel_layer.group_discard(self.driver_group, self.channel_name)
        if wanted:
            await self.channel_layer.group_add(wanted, self.channel_name)
        self.driver_group = wanted
