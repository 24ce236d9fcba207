"""Group commit (tracking/group_commit.py): concurrent small requests share one transaction,
each gets exactly its own results, and one request's failure stays its own."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from tests.services import wait_for
from tracking.group_commit import GroupCommit


class Recorder:
    """An `apply` that echoes each event and records the groups it was given. The first call
    can be held until the test lets it go, so that the others queue behind it meanwhile."""

    def __init__(self, *, hold_first: bool = False, fail_on: object = None) -> None:
        self.groups: list[list[Any]] = []
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self.started = threading.Event()
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, events: list[Any]) -> list[dict[str, Any]]:
        with self.lock:
            first = not self.groups
            self.groups.append(list(events))
        if first:
            self.started.set()
            self.release.wait(10)
        if self.fail_on in events:
            raise RuntimeError(f"cannot apply {self.fail_on}")
        return [{"id": event, "result": "accepted"} for event in events]


def run_all(calls: list[Any]) -> list[Any]:
    """Each callable on its own thread; returns what each returned or raised."""
    outcomes: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            outcomes[index] = calls[index]()
        except Exception as error:
            outcomes[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return outcomes


def queue_behind_a_held_leader(group: GroupCommit, apply: Recorder, requests: list[list[Any]]) -> list[Any]:
    """The first request leads and is held inside apply; the others queue; then all go."""
    outcomes: list[Any] = [None] * len(requests)

    def run(index: int) -> None:
        try:
            outcomes[index] = group.submit(requests[index])
        except Exception as error:
            outcomes[index] = error

    leader = threading.Thread(target=run, args=(0,))
    leader.start()
    assert apply.started.wait(10)
    others = [threading.Thread(target=run, args=(i,)) for i in range(1, len(requests))]
    for thread in others:
        thread.start()
    wait_for(lambda: group.queued == len(requests) - 1, timeout=10, what="the others to queue")
    apply.release.set()
    for thread in [leader, *others]:
        thread.join(10)
    return outcomes


def test_a_request_that_arrives_alone_is_applied_at_once_on_its_own() -> None:
    apply = Recorder()
    assert GroupCommit(apply).submit(["a", "b"]) == [
        {"id": "a", "result": "accepted"},
        {"id": "b", "result": "accepted"},
    ]
    assert apply.groups == [["a", "b"]]


def test_requests_that_queue_while_a_group_commits_share_the_next_transaction() -> None:
    apply = Recorder(hold_first=True)
    group = GroupCommit(apply)
    requests = [["lead"], *[[f"r{n}-1", f"r{n}-2"] for n in range(6)]]

    outcomes = queue_behind_a_held_leader(group, apply, requests)

    # The leader alone, then the six that queued meanwhile in one group, in arrival order.
    assert apply.groups[0] == ["lead"]
    assert len(apply.groups) == 2
    assert sorted(apply.groups[1]) == sorted(event for request in requests[1:] for event in request)
    # Each request gets exactly its own results, in its own order.
    for request, outcome in zip(requests, outcomes, strict=True):
        assert [result["id"] for result in outcome] == request
    assert group.queued == 0


def test_a_group_never_exceeds_the_event_limit() -> None:
    apply = Recorder(hold_first=True)
    group = GroupCommit(apply, max_events=5, max_alone=5)
    requests = [["lead"], *[[f"r{n}-{i}" for i in range(2)] for n in range(6)]]

    outcomes = queue_behind_a_held_leader(group, apply, requests)

    assert all(len(events) <= 5 for events in apply.groups)
    assert sorted(e for events in apply.groups for e in events) == sorted(e for r in requests for e in r)
    for request, outcome in zip(requests, outcomes, strict=True):
        assert [result["id"] for result in outcome] == request


def test_a_big_batch_is_applied_on_its_own_without_waiting_for_a_group() -> None:
    apply = Recorder(hold_first=True)
    group = GroupCommit(apply, max_alone=3)
    leader = threading.Thread(target=group.submit, args=(["lead"],))
    leader.start()
    assert apply.started.wait(10)

    # The leader is still held, yet the big batch goes straight through.
    assert [r["id"] for r in group.submit(["b1", "b2", "b3", "b4"])] == ["b1", "b2", "b3", "b4"]
    assert apply.groups == [["lead"], ["b1", "b2", "b3", "b4"]]
    apply.release.set()
    leader.join(10)


def test_when_a_group_fails_each_request_is_applied_again_alone_and_only_the_culprit_fails() -> None:
    apply = Recorder(hold_first=True, fail_on="poison")
    group = GroupCommit(apply)
    requests = [["lead"], ["good-1"], ["poison"], ["good-2", "good-3"]]

    outcomes = queue_behind_a_held_leader(group, apply, requests)

    assert [r["id"] for r in outcomes[0]] == ["lead"]
    assert [r["id"] for r in outcomes[1]] == ["good-1"]
    assert isinstance(outcomes[2], RuntimeError)
    assert [r["id"] for r in outcomes[3]] == ["good-2", "good-3"]
    # The failed group, then each of its requests on its own.
    assert sorted(apply.groups[1]) == ["good-1", "good-2", "good-3", "poison"]
    assert sorted(map(tuple, apply.groups[2:])) == [("good-1",), ("good-2", "good-3"), ("poison",)]
    # Nobody is left leading: the next request is applied at once.
    assert [r["id"] for r in group.submit(["after"])] == ["after"]


def test_a_lone_request_that_fails_raises_its_own_error_and_the_next_one_still_goes_through() -> None:
    apply = Recorder(fail_on="poison")
    group = GroupCommit(apply)
    with pytest.raises(RuntimeError, match="poison"):
        group.submit(["poison"])
    assert [r["id"] for r in group.submit(["next"])] == ["next"]
    assert apply.groups == [["poison"], ["next"]]


def test_many_concurrent_callers_all_get_their_own_results() -> None:
    apply = Recorder()
    group = GroupCommit(apply)
    requests = [[f"t{n}-{i}" for i in range(n % 3 + 1)] for n in range(64)]

    outcomes = run_all([lambda r=request: group.submit(r) for request in requests])

    for request, outcome in zip(requests, outcomes, strict=True):
        assert [result["id"] for result in outcome] == request
    applied = [event for events in apply.groups for event in events]
    assert sorted(applied) == sorted(event for request in requests for event in request)


@pytest.mark.django_db
def test_inside_a_transaction_the_events_are_applied_in_it_not_in_a_group() -> None:
    # pytest-django's `db` wraps the test in a transaction, as a caller's atomic block would.
    apply = Recorder(hold_first=True)
    group = GroupCommit(apply)
    leader = threading.Thread(target=group.submit, args=(["lead"],))
    leader.start()
    assert apply.started.wait(10)

    assert [r["id"] for r in group.submit(["mine"])] == ["mine"]
    assert group.queued == 0
    apply.release.set()
    leader.join(10)


def test_callers_on_an_event_loop_share_a_group_and_a_failed_group_is_applied_again_off_the_loop() -> None:
    loop_threads: set[int] = set()
    applied_on: list[int] = []

    class Where(Recorder):
        def __call__(self, events: list[Any]) -> list[dict[str, Any]]:
            applied_on.append(threading.get_ident())
            return super().__call__(events)

    apply = Where(hold_first=True, fail_on="poison")
    group = GroupCommit(apply)
    leader = threading.Thread(target=group.submit, args=(["lead"],))
    leader.start()
    assert apply.started.wait(10)

    def release_once_queued() -> None:
        wait_for(lambda: group.queued == 3, timeout=10, what="the loop's callers to queue")
        apply.release.set()

    async def callers() -> list[Any]:
        loop_threads.add(threading.get_ident())

        async def one(events: list[Any]) -> Any:
            try:
                return await group.submit_async(events)
            except Exception as error:
                return error

        return await asyncio.gather(one(["good-1"]), one(["poison"]), one(["good-2", "good-3"]))

    releaser = threading.Thread(target=release_once_queued)
    releaser.start()
    outcomes = asyncio.run(callers())
    releaser.join(10)
    leader.join(10)

    assert [r["id"] for r in outcomes[0]] == ["good-1"]
    assert isinstance(outcomes[1], RuntimeError)
    assert [r["id"] for r in outcomes[2]] == ["good-2", "good-3"]
    # One shared group for the three, then each on its own; none of it on the loop's thread.
    assert sorted(apply.groups[1]) == ["good-1", "good-2", "good-3", "poison"]
    assert sorted(map(tuple, apply.groups[2:])) == [("good-1",), ("good-2", "good-3"), ("poison",)]
    assert not loop_threads & set(applied_on)
