"""S1 against a live daphne: what a hostile socket client can do, and what it costs the server.

The consumer's own checks are tested with Channels' communicator in test_consumer.py; here the
limits that only the server can hold (config/wsserver.py) and the cross-process per-IP cap.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import struct
import time
from contextlib import ExitStack
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from tests.scale.support import Server, daphne_server, raise_open_files, seed_live
from tests.services import wait_for
from tests.tracking.test_consumer import SESSION_PREFIX, layer, messages, open_socket  # noqa: F401
from tracking import live, socket_limits
from tracking.models import Delivery

pytestmark = pytest.mark.django_db(transaction=True)
production = [pytest.mark.postgres, pytest.mark.redis]


def test_a_valid_token_joins_only_its_own_deliverys_group(post_events: Any) -> None:
    from tests.tracking.test_page import upsert_event

    response = post_events({"events": [upsert_event("ORD-WSL-G1"), upsert_event("ORD-WSL-G2")]})
    assert response.status_code == 200
    mine, other = Delivery.objects.get(reference="ORD-WSL-G1"), Delivery.objects.get(reference="ORD-WSL-G2")
    channel_layer = get_channel_layer()
    joined: list[tuple[str, str]] = []
    original = channel_layer.group_add

    async def recording(group: str, channel: str) -> None:
        joined.append((group, channel))
        await original(group, channel)

    async def scenario() -> None:
        channel_layer.group_add = recording
        try:
            communicator, connected = await open_socket(mine.tracking_token)
            assert connected
            await messages(communicator, quiet=0.1)
            await communicator.disconnect()
        finally:
            del channel_layer.group_add

    async_to_sync(scenario)()
    assert [group for group, _ in joined] == [live.delivery_group(mine.pk)]
    assert live.delivery_group(other.pk) not in {group for group, _ in joined}


def _frame_header(length: int) -> bytes:
    """A masked client text frame's header announcing `length` bytes of payload."""
    return bytes([0x81, 0x80 | 127]) + struct.pack("!Q", length) + os.urandom(4)


@pytest.mark.postgres
@pytest.mark.redis
def test_a_frame_announcing_more_than_64_kib_is_refused_before_its_payload_arrives() -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with daphne_server(CHANNEL_LAYER_PREFIX=SESSION_PREFIX) as server:
        (token,) = seed_live(server.url, "ORD-WSL-BIG", 1, driver="drv_wsl_big")
        with connect(f"{server.ws}/ws/t/{token}/", origin=server.url) as socket:  # type: ignore[arg-type]
            socket.recv(timeout=5)
            started = time.monotonic()
            # The header of a 1 MiB frame and 16 bytes of it: the server must not wait for the rest.
            socket.socket.sendall(_frame_header(1024 * 1024) + b"x" * 16)
            with pytest.raises(ConnectionClosed):
                while True:
                    socket.recv(timeout=2)
            assert time.monotonic() - started < 1
            assert socket.close_code == 1009
        with connect(f"{server.ws}/ws/t/{token}/", origin=server.url) as again:  # type: ignore[arg-type]
            assert again.recv(timeout=5)  # the server lives on


def _raw_socket(server: Server, token: str) -> socket.socket:
    """A websocket opened by hand on a plain TCP socket, its first message (the snapshot) read."""
    host, port = server.url.removeprefix("http://").split(":")
    raw = socket.create_connection((host, int(port)), timeout=5)
    raw.sendall(
        f"GET /ws/t/{token}/ HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
        f"Sec-WebSocket-Version: 13\r\nOrigin: {server.url}\r\n\r\n".encode()
    )
    received = b""
    while b"\r\n\r\n" not in received:
        received += raw.recv(65536)
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    while len(rest) < _frame_length(rest):
        rest += raw.recv(65536)
    return raw


def _frame_length(data: bytes) -> int:
    """The length of the unmasked server frame at the start of data, as far as it can be told."""
    if len(data) < 2:
        return 2
    length = data[1] & 0x7F
    if length < 126:
        return 2 + length
    if length == 126:
        return 4 + struct.unpack("!H", data[2:4])[0] if len(data) >= 4 else 4
    return 10 + struct.unpack("!Q", data[2:10])[0] if len(data) >= 10 else 10


@pytest.mark.postgres
@pytest.mark.redis
def test_a_client_still_sending_its_refused_frame_gets_the_close_frame_and_no_reset() -> None:
    with daphne_server(CHANNEL_LAYER_PREFIX=SESSION_PREFIX) as server:
        (token,) = seed_live(server.url, "ORD-WSL-SLOW", 1, driver="drv_wsl_slow")
        raw = _raw_socket(server, token)
        raw.sendall(_frame_header(1024 * 1024))
        # A slow client: its refused frame is still coming in after autobahn's 1 s close
        # handshake timeout, which used to reset the connection.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            raw.sendall(b"x" * 4096)
            time.sleep(0.05)
        received = b""
        while chunk := raw.recv(65536):  # a reset raises here
            received += chunk
        raw.close()
    assert received[:4] == bytes([0x88, len(received) - 2]) + struct.pack("!H", 1009)


async def _abuse(server: Server, tokens: list[str], kind: str, number: int) -> tuple[str, Any]:
    """One abusive client; returns what the server did: ("refused", status) or ("closed", code, seconds)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    token = tokens[(number // 5) % len(tokens)]  # each kind spread over every token
    origin: Any = {"evil": "https://evil.example", "no-origin": None}.get(kind, server.url)
    if kind == "wrong-token":
        token = "A" * 43
    try:
        socket = await connect(f"{server.ws}/ws/t/{token}/", origin=origin, open_timeout=20, max_size=None)
    except InvalidStatus as refused:
        return "refused", refused.response.status_code
    async with socket:
        await socket.recv()
        started = time.monotonic()
        try:
            if kind == "oversize":
                await socket.send("x" * (1024 * 1024))
            else:  # too fast: 10 frames a second
                for _ in range(10):
                    await socket.send("hi")
                    await asyncio.sleep(0.1)
            await asyncio.wait_for(socket.wait_closed(), 2)
        except ConnectionClosed:
            pass
        except TimeoutError:
            return "open", None
        await socket.wait_closed()
        return "closed", (socket.close_code, time.monotonic() - started)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_a_thousand_abusive_clients_are_refused_or_closed_and_cost_the_server_under_50_mb() -> None:
    raise_open_files()
    kinds = ["evil", "no-origin", "wrong-token", "oversize", "too-fast"]
    with daphne_server(CHANNEL_LAYER_PREFIX=SESSION_PREFIX, PORCHLIGHT_WS_MAX_PER_IP="0") as server:
        tokens = seed_live(server.url, "ORD-WSL-A", 50, driver="drv_wsl_a")

        async def fleet(count: int) -> list[tuple[str, str, Any]]:
            gate = asyncio.Semaphore(50)

            async def one(number: int) -> tuple[str, str, Any]:
                kind = kinds[number % len(kinds)]
                async with gate:
                    return (kind, *await _abuse(server, tokens, kind, number))

            return await asyncio.gather(*(one(n) for n in range(count)))

        async_to_sync(fleet)(50)  # warm up: imports, pools, first allocations
        before = server.rss_mb()
        outcomes = async_to_sync(fleet)(1000)
        after = server.rss_mb()

    by_kind: dict[str, list[Any]] = {}
    for kind, verdict, detail in outcomes:
        by_kind.setdefault(kind, []).append((verdict, detail))
    for kind in ("evil", "no-origin", "wrong-token"):
        assert by_kind[kind] == [("refused", 403)] * 200, kind
    for kind, code in (("oversize", 1009), ("too-fast", 1008)):
        assert {verdict for verdict, _ in by_kind[kind]} == {"closed"}, kind
        assert {detail[0] for _, detail in by_kind[kind]} == {code}, kind
        assert max(detail[1] for _, detail in by_kind[kind]) < 1.0, kind
    print(f"daphne RSS across 1,000 abusive clients: {before:.1f} -> {after:.1f} MB")
    assert after - before < 50, f"RSS grew from {before:.1f} to {after:.1f} MB"


@pytest.mark.postgres
@pytest.mark.redis
def test_the_per_ip_cap_on_open_sockets_holds_across_two_daphne_processes() -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    env = {"CHANNEL_LAYER_PREFIX": SESSION_PREFIX, "PORCHLIGHT_WS_MAX_PER_IP": "4"}
    with daphne_server(**env) as one, daphne_server(**env) as two, ExitStack() as sockets:
        tokens = seed_live(one.url, "ORD-WSL-IP", 5, driver="drv_wsl_ip")
        opened = []
        for n, server in enumerate([one, two, one, two]):
            socket = sockets.enter_context(connect(f"{server.ws}/ws/t/{tokens[n]}/", origin=server.url))  # type: ignore[arg-type]
            socket.recv(timeout=5)
            opened.append(socket)
        for server in (one, two):
            with pytest.raises(InvalidStatus) as refused:
                connect(f"{server.ws}/ws/t/{tokens[4]}/", origin=server.url)  # type: ignore[arg-type]
            assert refused.value.response.status_code == 403
        opened.pop().close()

        def reopen() -> Any:
            try:
                return sockets.enter_context(connect(f"{two.ws}/ws/t/{tokens[4]}/", origin=two.url))  # type: ignore[arg-type]
            except InvalidStatus:
                return None  # the close may not have been counted yet

        assert wait_for(reopen, timeout=5, interval=0.1, what="a place freed by a close")
        with pytest.raises(InvalidStatus):
            connect(f"{two.ws}/ws/t/{tokens[4]}/", origin=two.url)  # type: ignore[arg-type]

        # A process killed with its sockets open never gives its counts back: they stop
        # counting once it no longer says it is alive.
        os.kill(one.pid, signal.SIGKILL)
        killed = time.monotonic()
        limit = socket_limits.ALIVE_SECONDS + 5
        assert wait_for(reopen, timeout=limit, interval=0.2, what="the dead process's places")
        assert time.monotonic() - killed > 1  # not at once: its last heartbeat was still valid


def test_behind_a_trusted_proxy_the_per_ip_cap_counts_the_forwarded_client(
    post_events: Any, settings: Any
) -> None:
    from channels.testing import WebsocketCommunicator

    from config.asgi import application
    from tests.tracking.test_page import upsert_event

    settings.PORCHLIGHT_WS_MAX_PER_IP = 2
    settings.PORCHLIGHT_TRUSTED_PROXIES = 1
    assert post_events({"events": [upsert_event("ORD-WSL-XFF")]}).status_code == 200
    token = Delivery.objects.get(reference="ORD-WSL-XFF").tracking_token

    async def scenario() -> None:
        async def open_from(forwarded: str) -> tuple[WebsocketCommunicator, bool]:
            headers = [(b"origin", b"http://testserver"), (b"x-forwarded-for", forwarded.encode())]
            communicator = WebsocketCommunicator(application, f"/ws/t/{token}/", headers=headers)
            connected, _ = await communicator.connect(timeout=5)
            return communicator, connected

        first = [await open_from("198.51.100.7, 203.0.113.5") for _ in range(2)]
        assert all(connected for _, connected in first)
        # The same client behind the proxy, whatever it puts further left: refused.
        _, connected = await open_from("10.0.0.1, 203.0.113.5")
        assert not connected
        other, connected = await open_from("203.0.113.6")  # another client
        assert connected
        for communicator, _ in [*first, (other, True)]:
            await communicator.disconnect()
        again, connected = await open_from("203.0.113.5")  # their places were given back
        assert connected
        await again.disconnect()

    async_to_sync(scenario)()
