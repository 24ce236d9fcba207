"""The load client, run as its own process (`python -m bench.loadgen SPEC OUT`) so that it never
competes with the server for one event loop. Called through `bench.common.load`, not directly.

A plain asyncio HTTP/1.1 client over keep-alive connections: cheaper per request than any
library client, and it needs nothing outside the standard library. Every connection is open
before the clock starts, so "16 concurrent requests" are 16 requests in flight at once.

With `rate` set it is open-loop: request i is due at start + i / rate and its latency counts
from that moment, so a server that falls behind shows it in the percentiles (no coordinated
omission). Without `rate` each connection sends its next request as soon as the last answer
arrives (maximum throughput for that concurrency).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

# A status of 0 in the results means no HTTP answer at all (refused, reset, timed out).
NO_ANSWER = 0


def encode(method: str, path: str, headers: dict[str, str], body: bytes, host: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [
        f"{name}: {value}"
        for name, value in headers.items()
        if name.lower() not in ("host", "content-length")
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one response; return its status code and body. Raises on a closed or broken connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, _, header_block = head.partition(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    length = -1
    chunked = False
    for line in header_block.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    body = b""
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            body += (await reader.readexactly(size + 2))[:size]
            if size == 0:
                break
    elif length > 0:
        body = await reader.readexactly(length)
    return status, body


class Run:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.urls = [urlsplit(url) for url in spec["urls"]]
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = spec["requests"]
        self.rate: float | None = spec.get("rate")
        self.duration: float = spec.get("duration") or 3600.0
        self.timeout: float = spec.get("timeout") or 30.0
        # With keep_bodies, the body of every answer, in the order the answers came.
        self.keep_bodies: bool = spec.get("keep_bodies", False)
        self.bodies: list[str] = []
        self.next_index = 0
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.start = 0.0
        self.last_answer = 0.0
        self.connected = 0
        # The wire bytes of request i on url j, built once before the clock starts.
        self.wire = [
            [encode(m, p, h, b, f"{u.hostname}:{u.port}") for (m, p, h, b) in self.requests]
            for u in self.urls
        ]

    def take(self) -> int | None:
        index = self.next_index
        if index >= len(self.requests):
            return None
        if time.perf_counter() - self.start > self.duration:
            return None
        self.next_index += 1
        return index

    async def connect(self, url_index: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        u = self.urls[url_index]
        return await asyncio.open_connection(u.hostname, u.port, limit=4 * 1024 * 1024)

    async def worker(self, number: int, ready: asyncio.Event) -> None:
        url_index = number % len(self.urls)
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            connection = await self.connect(url_index)
        except OSError as error:
            self.errors[f"connect: {type(error).__name__}"] += 1
        self.connected += 1
        await ready.wait()
        while (index := self.take()) is not None:
            due = self.start + index / self.rate if self.rate else time.perf_counter()
            if self.rate and (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            status = NO_ANSWER
            try:
                if connection is None:
                    connection = await self.connect(url_index)
                reader, writer = connection
                writer.write(self.wire[url_index][index])
                status, body = await asyncio.wait_for(read_response(reader), self.timeout)
                if self.keep_bodies:
                    self.bodies.append(body.decode("utf-8", "replace"))
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                TimeoutError,
                ValueError,
            ) as error:
                self.errors[type(error).__name__] += 1
                if connection is not None:
                    connection[1].close()
                connection = None
            now = time.perf_counter()
            self.latencies.append(now - due)
            self.statuses[status] += 1
            self.last_answer = now
        if connection is not None:
            connection[1].close()

    async def main(self) -> dict[str, Any]:
        ready = asyncio.Event()
        workers = [asyncio.create_task(self.worker(n, ready)) for n in range(self.spec["concurrency"])]
        deadline = time.perf_counter() + 5
        while self.connected < len(workers) and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        self.start = time.perf_counter()
        ready.set()
        await asyncio.gather(*workers)
        elapsed = (self.last_answer or time.perf_counter()) - self.start
        return {
            "latencies": self.latencies,
            "statuses": dict(self.statuses),
            "errors": dict(self.errors),
            "elapsed": elapsed,
            "sent": self.next_index,
            "bodies": self.bodies,
        }


def main() -> None:
    spec_path, out_path = sys.argv[1], sys.argv[2]
    with open(spec_path, "rb") as handle:
        spec = pickle.load(handle)  # noqa: S301 (written by bench.common in this run)
    result = asyncio.run(Run(spec).main())
    with open(out_path, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
