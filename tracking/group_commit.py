"""Group commit for the intake: small requests that arrive together share one transaction.

A single event costs a whole transaction: the id claim, the row lock, the updates, the result
write-back and the commit, each a statement the ORM compiles and PostgreSQL answers. A batch of
500 pings costs about 0.1 ms an event, a single event several milliseconds. So concurrent small
requests of one process are applied together, the way a database commits concurrent
transactions with one WAL flush:

- a request puts its events in the queue and waits;
- one thread per process (the committer) takes everything queued, applies it with one
  `events_ingest` in one transaction, hands each request its own results, and goes on with
  whatever queued meanwhile.

Nothing waits for company: a request that arrives while the committer is idle is applied at
once. Only under load do groups form, and then a request waits at most for the group in flight.
One thread, not a leader elected among the requests: with many request threads runnable, each
hand-over between leaders would wait for the GIL while nobody commits.

The results are the ones separate transactions would give: ids are unique across the group (the
second copy of an id is a duplicate, as it would be a moment later), events of one delivery
apply in `occurred_at` order, rejected events are kept. If a group fails as a whole (the
database went away, a bug), every request in it is applied again on its own, in its own thread,
so one request's failure is only ever its own answer and nothing it did not commit is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connection

logger = logging.getLogger(__name__)

Results = list[dict[str, Any]]
Apply = Callable[[list[Any]], Results]


@dataclass(eq=False)
class _Request:
    events: list[Any]
    done: threading.Event = field(default_factory=threading.Event)
    results: Results | None = None
    # What a group of this request alone raised: raised again in the request's thread.
    error: Exception | None = None
    # For a caller on an event loop: called from the committer once results or error are set.
    on_done: Callable[[], None] | None = None

    def finish(self) -> None:
        self.done.set()
        if self.on_done is not None:
            self.on_done()


class GroupCommit:
    """Applies the events of concurrent callers together, up to `max_events` per group; a
    caller with more than `max_alone` events is applied on its own, in its own thread (a big
    batch gains nothing from company and would make small requests wait for it)."""

    def __init__(self, apply: Apply, *, max_events: int = 500, max_alone: int = 50) -> None:
        self._apply = apply
        self._max_events = max_events
        self._max_alone = max_alone
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)
        self._queue: list[_Request] = []
        self._committer: threading.Thread | None = None

    @property
    def queued(self) -> int:
        """Requests waiting for the committer to take them."""
        with self._lock:
            return len(self._queue)

    def submit(self, events: list[Any]) -> Results:
        """The results of `events`, in their order, once they are committed."""
        if len(events) > self._max_alone or connection.in_atomic_block:
            # Inside a caller's transaction, the events must be part of it, not of a group's.
            return self._apply(events)
        request = _Request(events)
        self._enqueue(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        if request.results is None:  # a shared group failed: alone now, raising our own error
            return self._apply(events)
        return request.results

    async def submit_async(self, events: list[Any]) -> Results:
        """`submit` for a caller on an event loop: the loop goes on serving while the events
        are committed. What must run alone (a big batch, a group's failure) runs in a worker
        thread, never on the loop."""
        alone = sync_to_async(self._apply_alone, thread_sensitive=False)
        if len(events) > self._max_alone:
            return await alone(events)
        loop = asyncio.get_running_loop()
        committed = loop.create_future()

        def wake() -> None:
            if not committed.done():  # the caller may have gone (cancelled)
                committed.set_result(None)

        def on_done() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(wake)

        request = _Request(events, on_done=on_done)
        self._enqueue(request)
        await committed
        if request.error is not None:
            raise request.error
        if request.results is None:
            return await alone(events)
        return request.results

    def _apply_alone(self, events: list[Any]) -> Results:
        try:
            return self._apply(events)
        finally:
            connection.close()  # a worker thread's connection goes back, as the committer's does

    def _enqueue(self, request: _Request) -> None:
        with self._lock:
            self._queue.append(request)
            if self._committer is None or not self._committer.is_alive():
                self._committer = threading.Thread(
                    target=self._commit_forever, name="group-commit", daemon=True
                )
                self._committer.start()
            self._queued.notify()

    def _commit_forever(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    self._queued.wait()
                group = self._take_group()
            try:
                self._commit(group)
            finally:
                for request in group:
                    request.finish()

    def _take_group(self) -> list[_Request]:
        group: list[_Request] = []
        total = 0
        while self._queue and (not group or total + len(self._queue[0].events) <= self._max_events):
            request = self._queue.pop(0)
            group.append(request)
            total += len(request.events)
        return group

    def _commit(self, group: list[_Request]) -> None:
        try:
            results = self._apply([event for request in group for event in request.events])
        except Exception as error:
            if len(group) == 1:
                group[0].error = error
            else:  # each is applied again alone (its `results` stay None) and raises there
                logger.info("a group of %d requests failed; each is applied on its own", len(group))
            return
        finally:
            # The committer's connection goes back to the pool between groups, as a
            # request's does when it ends (CONN_MAX_AGE=0); a broken one is not kept.
            connection.close()
        offset = 0
        for request in group:
            request.results = results[offset : offset + len(request.events)]
            offset += len(request.events)
