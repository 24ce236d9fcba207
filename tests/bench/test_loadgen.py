"""The load client that `make bench` figures rest on: it must count every request and every
failure, and read answers however the server frames them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.common import Request, load, percentile
from bench.loadgen import read_response


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as daphne

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = 500 if self.path == "/boom" else 200
        body = b"no" if status == 500 else b"ok"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _read(raw: bytes) -> tuple[int, bytes]:
    async def run() -> tuple[tuple[int, bytes], bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw + b"NEXT")
        reader.feed_eof()
        answer = await read_response(reader)
        return answer, await reader.read()

    answer, rest = asyncio.run(run())
    assert rest == b"NEXT", "the answer's body must be consumed exactly"
    return answer


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 99) == 0.0


def test_the_client_reads_sized_and_chunked_answers_to_their_end() -> None:
    assert _read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello") == (200, b"hello")
    chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert _read(chunked) == (404, b"abcde")
    assert _read(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n") == (304, b"")


def test_load_counts_every_request_and_every_failure(server: str) -> None:
    requests = [Request("POST", "/ok", {"Content-Type": "text/plain"}, b"x" * 100)] * 40
    requests += [Request("POST", "/boom", {}, b"")] * 10
    result = load([server], requests, concurrency=4, client="python")
    assert result.sent == 50
    assert result.statuses == {200: 40, 500: 10}
    assert result.failed == 10
    assert len(result.latencies) == 50
    assert result.rps > 0
    assert result.bodies == [], "bodies are kept only when asked for"


def test_load_keeps_every_answers_body_when_asked(server: str) -> None:
    requests = [Request("POST", "/ok")] * 6 + [Request("POST", "/boom")] * 2
    result = load([server], requests, concurrency=3, client="python", keep_bodies=True)
    assert sorted(result.bodies) == ["no"] * 2 + ["ok"] * 6


def test_a_refused_connection_is_a_failed_row_not_a_crash() -> None:
    result = load(["http://127.0.0.1:9"], [Request("POST", "/ok")] * 3, concurrency=2, client="python")
    assert result.sent == 3
    assert result.statuses == {0: 3}
    assert result.failed == 3


def test_an_open_loop_rate_spreads_the_requests_over_time(server: str) -> None:
    started = time.monotonic()
    result = load([server], [Request("POST", "/ok")] * 20, concurrency=4, rate=100, client="python")
    # 20 requests at 100/s: the last is due 0.19 s after the first.
    assert result.elapsed >= 0.18
    assert time.monotonic() - started >= 0.18
    assert result.statuses == {200: 20}
