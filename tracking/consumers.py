"""The tracking page's socket, `/ws/t/<token>/`: read-only, relays what tracking.live sends.

The client has nothing to say: a frame that is too large or comes too often closes the socket
(1009 / 1008); under daphne a frame over 64 KiB is refused as its header arrives
(config/wsserver.py). An unknown, malformed, revoked or expired token is refused before accept,
as is a token that already has too many sockets open in this process, and a client IP that
already has PORCHLIGHT_WS_MAX_PER_IP sockets open across all processes (tracking/socket_limits.py).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import weakref
from collections import Counter, defaultdict
from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http import HttpRequest

from config.middleware import client_ip
from tracking import live, socket_limits
from tracking.customer import delivery_language, socket_delivery

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 256
# A few stray frames are tolerated (a browser extension, a proxy's keepalive); a stream is not.
MAX_FRAMES_PER_WINDOW = 3
FRAME_WINDOW_SECONDS = 1.0
# One link is one household; more than this many tabs on one token in one process is a flood.
MAX_SOCKETS_PER_TOKEN = 20
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009

# How often each process checks that its channel layer delivers (and notices it came back).
PROBE_INTERVAL = 2.0
# What config/wsserver.py puts in a daphne socket's scope: synchronous, bounded writes.
WRITER_EXTENSION = "porchlight.socket"

_open_per_token: Counter[str] = Counter()


def _client_ip(scope: dict[str, Any]) -> str:
    """The client's IP by the same rule as the pages' (PORCHLIGHT_TRUSTED_PROXIES)."""
    request = HttpRequest()
    request.META["REMOTE_ADDR"] = str((scope.get("client") or ("", 0))[0] or "")
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            request.META["HTTP_X_FORWARDED_FOR"] = value.decode("latin-1")
    return client_ip(request)


class _DriverHub:
    """One listener per process and driver: the process, not each socket, is in `driver.<pk>`.

    A ping arrives here once per process (one group message, one decode) and is written
    straight to the local sockets that follow that driver, with no per-socket channel queue,
    task wake-up or handler dispatch: that is most of what stock Channels spends per recipient.
    Under daphne it is also framed once, and written to each socket without an await.

    The hub also knows every socket of the process, and probes the channel layer through Redis
    every PROBE_INTERVAL seconds: when the layer comes back after failing (Redis restarted),
    whatever was published meanwhile is lost, so every socket is sent its delivery's state
    again (one database read per delivery), as a page would re-read its snapshot.
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.channel = ""
        self.followers: dict[int, set[TrackingConsumer]] = defaultdict(set)
        self.members: set[TrackingConsumer] = set()
        self.tasks: list[asyncio.Task[None]] = []
        self.lock = asyncio.Lock()
        self.probe = asyncio.Event()

    async def _start(self) -> None:
        """Under the lock: the process's channel and its listener, once."""
        if not self.channel:
            self.channel = await self.layer.new_channel("driver-hub.")
            loop = asyncio.get_running_loop()
            self.tasks = [loop.create_task(self._listen()), loop.create_task(self._watch())]

    async def join(self, consumer: TrackingConsumer) -> None:
        async with self.lock:
            await self._start()
            self.members.add(consumer)

    def leave(self, consumer: TrackingConsumer) -> None:
        self.members.discard(consumer)

    async def follow(self, driver_id: int, consumer: TrackingConsumer) -> None:
        async with self.lock:
            await self._start()
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
                    await self.relay(message)
                elif message.get("type") == "hub.probe":
                    self.probe.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                # One bad message or a layer hiccup must not stop positions for the process.
                logger.exception("driver hub: message not relayed")
                await asyncio.sleep(0.1)

    async def _watch(self) -> None:
        reachable = True
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            await _heartbeat()  # the per-IP socket counts of a live process stay counted
            self.probe.clear()
            try:
                await asyncio.wait_for(self.layer.send(self.channel, {"type": "hub.probe"}), PROBE_INTERVAL)
                await asyncio.wait_for(self.probe.wait(), PROBE_INTERVAL)
                ok = True
            except asyncio.CancelledError:
                raise
            except Exception:
                ok = False
            if ok and not reachable:
                logger.warning("channel layer back: sending %d sockets their state again", len(self.members))
                await self.resync()
            elif reachable and not ok:
                logger.warning("channel layer unreachable: live updates paused")
            reachable = ok

    async def resync(self) -> None:
        by_token: dict[str, list[TrackingConsumer]] = defaultdict(list)
        for consumer in list(self.members):
            by_token[consumer.token].append(consumer)
        for token, consumers in by_token.items():
            try:
                state = await _state(token)
                for consumer in consumers:
                    await consumer.resync(state)
            except Exception:
                logger.exception("socket state not sent again")

    async def relay(self, message: dict[str, Any]) -> None:
        prepared = None
        others = []
        for consumer in list(self.followers.get(message.get("driver", 0), ())):
            if not consumer.takes_position(message):
                continue
            writer = consumer.writer
            if writer is None or not writer.open:
                others.append(consumer)
                continue
            if prepared is None:
                prepared = writer.prepare(message["text"])
            if not writer.write_prepared(prepared):
                consumer.closed = True  # over capacity: aborted; disconnect() cleans up
        for consumer in others:  # not under daphne (tests), or not open: one ASGI send each
            await consumer.send_position(message)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _DriverHub] = weakref.WeakKeyDictionary()


def _hub(layer: Any) -> _DriverHub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None or hub.layer is not layer:
        hub = _hubs[loop] = _DriverHub(layer)
    return hub


@database_sync_to_async
def _load(token: str, requested_language: str | None, ip: str) -> tuple[int, str, int | None] | None:
    """A new socket's delivery, language and the driver it follows (None if it shows no
    position), or None to refuse it (unknown token, IP at its cap)."""
    delivery = socket_delivery(token=token)
    if delivery is None or not socket_limits.ip_claim(ip=ip):
        return None
    driver = delivery.driver_id if live.shows_position(delivery) else None
    return delivery.pk, delivery_language(delivery, requested_language), driver


@database_sync_to_async
def _state(token: str) -> dict[str, Any] | None:
    delivery = socket_delivery(token=token)
    return live.delivery_state(delivery) if delivery is not None else None


_release_ip = sync_to_async(socket_limits.ip_release, thread_sensitive=False)
_heartbeat = sync_to_async(socket_limits.heartbeat_send, thread_sensitive=False)


class TrackingConsumer(AsyncWebsocketConsumer):
    token = ""
    counted = False
    language = "en"
    delivery_group = ""
    driver_id: int | None = None
    closed = False
    live_position = False
    position_ts = 0.0
    client_ip = ""
    writer: Any = None
    frames: list[float]

    async def connect(self) -> None:
        self.frames = []
        self.token = str(self.scope["url_route"]["kwargs"].get("token", ""))
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        ip = _client_ip(self.scope)
        loaded = None
        if _open_per_token[self.token] < MAX_SOCKETS_PER_TOKEN:
            loaded = await _load(self.token, (query.get("lang") or [None])[0], ip)
        if loaded is None:
            await self.close()  # before accept: the handshake is answered 403
            return
        _open_per_token[self.token] += 1
        self.counted = True
        self.client_ip = ip
        self.writer = (self.scope.get("extensions") or {}).get(WRITER_EXTENSION)
        delivery_id, self.language, driver_id = loaded
        self.delivery_group = live.delivery_group(delivery_id)
        await self.channel_layer.group_add(self.delivery_group, self.channel_name)
        await self.accept()
        await _hub(self.channel_layer).join(self)
        # Join the groups, then read the state: a change published in between reaches this
        # socket (twice at worst). Read before joining, it was lost, and a reconnect storm left
        # pages stale (tests/scale/test_ws_reconnect_storm.py).
        self.live_position = driver_id is not None
        await self._follow_driver(driver_id)
        state = await _state(self.token)
        if state is None:  # revoked or expired meanwhile
            await self.close()
            return
        await self.delivery_state(state)

    async def disconnect(self, code: int) -> None:
        self.closed = True
        _hub(self.channel_layer).leave(self)
        if self.counted:
            self.counted = False
            _open_per_token[self.token] -= 1
            if _open_per_token[self.token] <= 0:
                del _open_per_token[self.token]
            if self.client_ip and settings.PORCHLIGHT_WS_MAX_PER_IP > 0:
                await _release_ip(ip=self.client_ip)
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

    async def delivery_token(self, event: dict[str, Any]) -> None:
        """Staff reissued the link: a socket opened with an older token closes (1008), as its
        page now answers 404."""
        if not hmac.compare_digest(live.token_digest(self.token), str(event.get("valid", ""))):
            await self.close(code=CLOSE_POLICY)

    def takes_position(self, event: dict[str, Any]) -> bool:
        """Whether a driver ping from the hub goes to this socket (and, if so, it is now its newest)."""
        # A ping can race the message that ended the privacy window; check it again here.
        if not self.live_position or event["ts"] < self.position_ts or self.closed:
            return False
        self.position_ts = event["ts"]
        return True

    async def send_position(self, event: dict[str, Any]) -> None:
        """A ping the hub let through, as a plain ASGI send (when not under daphne)."""
        try:
            await self.base_send({"type": "websocket.send", "text": event["text"]})
        except Exception:  # the socket went away under us; disconnect() cleans up
            self.closed = True

    async def resync(self, state: dict[str, Any] | None) -> None:
        """The delivery's state again, read after the channel layer came back (see _DriverHub)."""
        if self.closed:
            return
        if state is None:  # revoked or expired meanwhile
            await self.close()
            return
        await self.delivery_state(state)

    async def _follow_driver(self, driver_id: int | None) -> None:
        if driver_id == self.driver_id:
            return
        hub = _hub(self.channel_layer)
        if self.driver_id:
            await hub.unfollow(self.driver_id, self)
        if driver_id:
            await hub.follow(driver_id, self)
        self.driver_id = driver_id
