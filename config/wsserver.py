"""Daphne's websocket server, with the limits an ASGI application cannot set for itself (and
one change to its HTTP requests, 5.).

Installed by config/asgi.py, so every `daphne config.asgi:application` has them. Daphne leaves
open what a read-only socket facing the internet needs closed:

1. Inbound size. Daphne sets neither of autobahn's `maxFramePayloadSize` and
   `maxMessagePayloadSize` (0: unlimited), so a 1 MiB frame is buffered whole before the
   application sees it. Here both are `PORCHLIGHT_WS_MAX_MESSAGE_BYTES` (64 KiB): a larger frame
   fails the connection with 1009 as soon as its header arrives, before its payload is read;
   what the client still sends is dropped unread (`_discard_the_rest`).
2. Outbound buffering. Daphne writes every message into Twisted's transport, whose buffer has
   no bound: a viewer that stops reading its socket (a frozen tab, a dead phone behind a NAT)
   makes the server hold everything sent to it, until the ping timeout (20 + 30 s) at best.
   Here the kernel's send buffer is fixed at `PORCHLIGHT_WS_SEND_BUFFER_BYTES` (Linux doubles
   it; without this it grows to 4 MiB for a socket that does not drain), and a write that would
   leave more than that again unsent in daphne aborts the connection instead: the socket is
   "over capacity", logged (`websocket over capacity`) and counted (`over_capacity`). The page
   reconnects and re-reads its snapshot, as after any drop.
3. Close codes. Autobahn lets an application close only with 1000 or 3000-4999, so the
   consumer's 1008 (policy) and 1009 (too big) raised inside daphne and the client saw 1011
   with an error logged per abusive client. The codes RFC 6455 defines for an endpoint are
   sent as they are.
4. Fan-out cost. A message for many sockets is framed once (autobahn's `prepareMessage`) and
   written to each socket synchronously, instead of one framing and one awaited send per
   socket: `scope["extensions"]["porchlight.socket"]` is a `SocketWriter` for that. A socket
   with nothing queued gets the frame with one `send`, not through Twisted's buffer
   (`_send_now`).

And one for HTTP:

5. Form bodies. For every POST with a body, Twisted parses the Content-Type header with the
   email package, to decode a form body into `request.args` before daphne sees the request.
   Daphne never reads `request.args`: the application gets the body as it is. The parse was
   3% of the CPU a single event costs the intake (`python -m bench.profile_intake single`),
   and a multipart POST without a boundary got Twisted's bare 400 instead of the
   application's answer. Requests are built with Twisted's own switch for it,
   `parsePOSTFormSubmission=False`.

Under another server (Channels' test communicator, uvicorn) none of this is installed and the
consumer falls back to plain ASGI sends.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

from twisted.internet import tcp

logger = logging.getLogger(__name__)

EXTENSION = "porchlight.socket"
# Sockets closed for being over capacity since this process started (read by tests and benches).
over_capacity = 0
# RFC 6455 section 7.4.1 codes an endpoint may send (autobahn only lets applications send 1000).
RFC_CLOSE_CODES = frozenset({1001, 1003, 1007, 1008, 1009, 1010, 1011})
_installed = False
# How long the rest of a frame refused as too big is read and dropped before the socket is reset.
DISCARD_SECONDS = 10.0


def unsent_bytes(transport: Any) -> int:
    """Bytes a Twisted TCP transport holds that the kernel has not taken yet (0 if unknown)."""
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen  # type: ignore[no-any-return]
    except AttributeError:  # not a plain TCP transport (TLS wraps it): no bound from here
        return 0


class SocketWriter:
    """Synchronous writes to one daphne websocket, checked against the send-buffer bound."""

    __slots__ = ("limit", "protocol")

    def __init__(self, protocol: Any, limit: int) -> None:
        self.protocol = protocol
        self.limit = limit

    @property
    def open(self) -> bool:
        return bool(self.protocol.state == self.protocol.STATE_OPEN)

    def prepare(self, text: str) -> Any:
        """One frame for many sockets (no per-message compression here: daphne offers none)."""
        return self.protocol.factory.prepareMessage(text.encode())

    def write_prepared(self, prepared: Any) -> bool:
        """Write a prepared message to an open socket; False if that made it over capacity."""
        protocol = self.protocol
        if not _within_bound(protocol, len(prepared.payloadHybi), self.limit):
            return False
        if protocol._perMessageCompress is not None or not _send_now(protocol, prepared.payloadHybi):
            protocol.sendPreparedMessage(prepared)
        return True


def _send_now(protocol: Any, frame: bytes) -> bool:
    """Give `frame` to the kernel now, as asyncio's own transports do, when nothing is queued
    before it; False (nothing done) when it must go the usual way, behind what is queued.

    Twisted's `write` only buffers: it registers the socket with the event loop, and the next
    turn of the loop writes it and unregisters it again. For one frame to hundreds of sockets
    that costs several times the `send` itself (two epoll changes and a loop callback per
    socket), and no socket gets its frame before the last one is buffered."""
    transport = protocol.transport
    if (
        not isinstance(transport, tcp.Connection)  # TLS, a test transport: their own write
        or transport.TLS
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnected
        or protocol.send_queue
        or unsent_bytes(transport)
    ):
        return False
    try:
        sent = transport.socket.send(frame)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        return False  # a reset or closed socket: Twisted's write path meets it and closes
    if sent < len(frame):
        transport.write(frame[sent:])  # the rest follows as any write would
    return True


def _discard_the_rest(protocol: Any) -> None:
    """After the close frame for a frame too big: drop what the peer still sends, unread.

    Autobahn would read the rest of the frame, unmasking it byte by byte (1 MiB for nothing), and
    wait only its close handshake timeout (1 s) for the peer's close reply, which comes after
    that frame; then it aborts, and a reset can reach the peer before it has read the close
    frame (it sees 1006, not 1009). Here the server says it has no more to send (FIN after the
    close frame) and drops the rest unparsed, until the peer closes its side too, or until
    DISCARD_SECONDS have passed."""
    transport = protocol.transport
    if protocol.state != protocol.STATE_CLOSING or not isinstance(transport, tcp.Connection):
        return  # a TLS or test transport: autobahn's own ending
    if protocol.closeHandshakeTimeoutCall is not None:
        protocol.closeHandshakeTimeoutCall.cancel()
        protocol.closeHandshakeTimeoutCall = None
    protocol.dataReceived = _ignore
    transport.loseWriteConnection()
    transport.reactor.callLater(DISCARD_SECONDS, _abort_if_open, transport)


def _ignore(data: bytes) -> None:
    pass


def _abort_if_open(transport: Any) -> None:
    if transport.connected:
        transport.abortConnection()


def _within_bound(protocol: Any, size: int, limit: int) -> bool:
    if getattr(protocol, "over_capacity", False):
        return False  # aborted, its disconnect not yet delivered
    unsent = unsent_bytes(protocol.transport)
    if limit <= 0 or unsent + size <= limit:
        return True
    global over_capacity
    over_capacity += 1
    protocol.over_capacity = True
    logger.warning(
        "websocket over capacity: %d bytes unsent, closed (%d so far in this process)", unsent, over_capacity
    )
    # No close frame: it would queue behind everything unsent. The application still gets its
    # websocket.disconnect (daphne's onClose), so the consumer cleans up as after any drop.
    protocol.transport.abortConnection()
    return False


def _limit_kernel_buffer(transport: Any, size: int) -> None:
    """A fixed kernel send buffer: Linux would otherwise let it grow to tcp_wmem's maximum
    (4 MiB) for a socket that does not drain, before anything reaches our own bound."""
    if size <= 0:
        return
    with contextlib.suppress(AttributeError, OSError):  # not a plain TCP socket
        transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def install(*, max_message_bytes: int, send_buffer_bytes: int) -> None:
    """Patch daphne's websocket protocol, its requests and its server (once per process)."""
    global _installed
    if _installed:
        return
    try:
        from daphne.http_protocol import WebRequest
        from daphne.server import Server
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # daphne is not what serves us
        return
    _installed = True

    on_connect = WebSocketProtocol.onConnect

    def limited_on_connect(self: Any, request: Any) -> Any:
        # Copied from the factory when the connection was made; set before any frame is read.
        self.maxFramePayloadSize = self.maxMessagePayloadSize = max_message_bytes
        # Say why (a close frame with 1009) rather than autobahn's default silent TCP drop.
        self.failByDrop = False
        _limit_kernel_buffer(self.transport, send_buffer_bytes)
        return on_connect(self, request)

    server_send = WebSocketProtocol.serverSend

    def bounded_server_send(self: Any, content: Any, binary: bool = False) -> None:
        if self.state == self.STATE_OPEN and not _within_bound(self, len(content), send_buffer_bytes):
            return
        server_send(self, content, binary)

    def too_big(self: Any, size: int, limit: int, reason: str) -> None:
        too_big_fail(self, size, limit, reason)
        _discard_the_rest(self)

    def rfc_server_close(self: Any, code: int | None = None) -> None:
        if code in RFC_CLOSE_CODES:
            self.sendCloseFrame(code=code, isReply=False)  # sendClose without its code policy
        else:
            server_close(self, code)

    server_close = WebSocketProtocol.serverClose
    create_application = Server.create_application

    def create_with_writer(self: Any, protocol: Any, scope: dict[str, Any]) -> Any:
        if scope.get("type") == "websocket":
            scope.setdefault("extensions", {})[EXTENSION] = SocketWriter(protocol, send_buffer_bytes)
        return create_application(self, protocol, scope)

    too_big_fail = WebSocketProtocol._max_message_size_exceeded
    WebSocketProtocol._max_message_size_exceeded = too_big  # type: ignore[method-assign]
    WebSocketProtocol.onConnect = limited_on_connect  # type: ignore[method-assign]
    WebSocketProtocol.serverSend = bounded_server_send  # type: ignore[method-assign]
    WebSocketProtocol.serverClose = rfc_server_close  # type: ignore[method-assign]
    Server.create_application = create_with_writer  # type: ignore[method-assign]

    request_init = WebRequest.__init__

    def unparsed_request_init(self: Any, *args: Any, **kwargs: Any) -> None:
        request_init(self, *args, parsePOSTFormSubmission=False, **kwargs)

    WebRequest.__init__ = unparsed_request_init  # type: ignore[method-assign]
