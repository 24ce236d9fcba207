"""The per-IP cap on open tracking sockets, across web processes (PORCHLIGHT_WS_MAX_PER_IP).

Each process counts its own sockets per client IP, exactly, in memory. With Redis it also
writes that count into one hash per IP (a field per process), and keeps a key of its own alive
for ALIVE_SECONDS while it holds sockets (renewed by the socket hub every few seconds). A new
socket is refused when this process's count plus the counts of the other processes still alive
reach the cap. A process that dies without giving its counts back (kill -9, a host lost) stops
counting ALIVE_SECONDS later, whatever the traffic from that IP: no count outlives its process.
Without Redis (embedded mode) the cap is per process. A Redis error fails open: the live page
matters more than the cap.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import uuid
from collections import Counter
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

PROCESS = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
ALIVE_SECONDS = 10
# A hash nobody touched for this long goes (its processes are long gone).
KEY_TTL = 3600
_ALIVE = "porchlight:ws-alive:"

_local: Counter[str] = Counter()
_lock = threading.Lock()
_client: Any = None


def _redis() -> Any:
    global _client
    if not settings.REDIS_URL:
        return None
    if _client is None:
        import redis

        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    return _client


def _key(ip: str) -> str:
    return "porchlight:ws-ip:" + hashlib.sha256(ip.encode()).hexdigest()[:32]


def _others(client: Any, key: str) -> int:
    """Sockets of this IP held by the other processes that are alive (dead ones are dropped)."""
    counts = {field.decode(): int(value) for field, value in client.hgetall(key).items()}
    peers = [name for name, count in counts.items() if name != PROCESS and count > 0]
    if not peers:
        return 0
    alive = client.mget([_ALIVE + name for name in peers])
    dead = [name for name, mark in zip(peers, alive, strict=True) if mark is None]
    if dead:
        client.hdel(key, *dead)
    return sum(counts[name] for name, mark in zip(peers, alive, strict=True) if mark is not None)


def ip_claim(*, ip: str) -> bool:
    """Count one more socket for `ip`; False, counting nothing, if it is at the cap."""
    limit = settings.PORCHLIGHT_WS_MAX_PER_IP
    if not ip or limit <= 0:
        return True
    with _lock:
        if _local[ip] >= limit:
            return False
        _local[ip] += 1
    client = _redis()
    if client is None:
        return True
    key = _key(ip)
    try:
        if _local[ip] - 1 + _others(client, key) >= limit:
            _forget(ip)
            return False
        pipe = client.pipeline(transaction=False)
        pipe.hincrby(key, PROCESS, 1).expire(key, KEY_TTL).set(_ALIVE + PROCESS, 1, ex=ALIVE_SECONDS)
        pipe.execute()
    except Exception:
        logger.warning("could not count a socket for its IP", exc_info=True)
    return True


def ip_release(*, ip: str) -> None:
    """Give back a socket counted by ip_claim."""
    if not ip or settings.PORCHLIGHT_WS_MAX_PER_IP <= 0:
        return
    _forget(ip)
    client = _redis()
    if client is None:
        return
    key = _key(ip)
    try:
        if client.hincrby(key, PROCESS, -1) <= 0:
            client.hdel(key, PROCESS)
    except Exception:
        logger.warning("could not give back a socket's IP count", exc_info=True)


def _forget(ip: str) -> None:
    with _lock:
        _local[ip] -= 1
        if _local[ip] <= 0:
            del _local[ip]


def heartbeat_send() -> None:
    """Keep this process's counts alive while it holds sockets (called every few seconds)."""
    client = _redis()
    if client is None or not _local:
        return
    try:
        client.set(_ALIVE + PROCESS, 1, ex=ALIVE_SECONDS)
    except Exception:
        logger.warning("socket counts: heartbeat not written", exc_info=True)
