"""Work that follows a commit but must not hold the request: handing tasks to the broker.

With a broker (production), `run_soon` queues the call for one thread per process and returns
at once, so a stalled or unreachable Redis costs the request nothing (measured with the broker
paused: every status change waited about 6 s, its Celery publish's socket timeout and retry).
What is queued here is only ever a hint: the rows it names are committed, and the beat
sweepers hand out whatever a lost hint did not (a full queue, a process that dies).
Without a broker (embedded mode, eager Celery) the call runs at once, as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)

MAX_WAITING = 10_000

_calls: queue.Queue[Callable[[], None]] = queue.Queue(MAX_WAITING)
_lock = threading.Lock()
_thread: threading.Thread | None = None
_loop: tuple[int, asyncio.AbstractEventLoop, threading.Thread] | None = None


def in_background() -> bool:
    return not settings.CELERY_TASK_ALWAYS_EAGER and settings.PORCHLIGHT_PUBLISH_IN_BACKGROUND


def run_soon(call: Callable[[], None]) -> None:
    """Run `call` on this process's publishing thread (or now, without a broker)."""
    if not in_background():
        call()
        return
    _start()
    try:
        _calls.put_nowait(call)
    except queue.Full:
        logger.warning("%d publishes waiting: this one is left to the sweepers", MAX_WAITING)


def _start() -> None:
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    with _lock:
        # Started on first use, so that a forked Celery pool child gets a thread of its own.
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_work, name="porchlight-publish", daemon=True)
            _thread.start()


def _work() -> None:
    while True:
        call = _calls.get()
        try:
            call()
        except Exception:
            logger.exception("a background publish failed; the sweepers will hand the work out")
        finally:
            _calls.task_done()
            # A call that read the database must not leave a connection open in this thread.
            connections.close_all()


def wait_idle(*, timeout: float = 10.0) -> bool:
    """Until every call queued so far has run; False after `timeout` seconds (for tests)."""
    deadline = time.monotonic() + timeout
    while _calls.unfinished_tasks:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def event_loop() -> asyncio.AbstractEventLoop:
    """An event loop of this process's own, running on a daemon thread.

    For live pushes made where no server loop runs (a WSGI web process, a Celery worker): they go
    out on it without holding the caller, and the channel layer keeps its Redis connections on
    one loop instead of opening new ones for a new loop at every push."""
    global _loop
    with _lock:
        if _loop is None or _loop[0] != os.getpid() or not _loop[2].is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="porchlight-loop", daemon=True)
            thread.start()
            _loop = (os.getpid(), loop, thread)
        return _loop[1]
