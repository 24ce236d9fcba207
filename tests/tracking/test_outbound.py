"""The outbox to the routing backend (contract section 2): written with the change, sent signed,
retried with full-jitter backoff for at least 24 hours, then flagged for staff."""

from __future__ import annotations

import ast
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kombu.exceptions
import pytest
import time_machine
from django.conf import settings as django_settings
from django.db import connection, transaction
from django.test import TestCase
from django.utils import timezone

from tests.tracking.outbound_support import (  # noqa: F401 (the *_fixture names are fixtures)
    OUTBOUND_SECRET,
    SLOT_DATA,
    FakeRoutingBackend,
    backend_fixture,
    closed_port,
    eager_fixture,
    make_delivery,
)
from tracking import outbound, signing, tasks
from tracking.models import OutboundEvent, OutboundStatus
from tracking.outbound import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    DISPATCH_GRACE,
    backoff_delay,
    outbound_deliver,
    outbound_dispatch_due,
    outbound_due_ids,
    outbound_enqueue,
)
from tracking.tasks import SHORT_WAIT, outbound_send, outbound_sweep

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)
EVENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class Boom(Exception):
    pass


def enqueue_unsent(**data: Any) -> OutboundEvent:
    """A committed-looking row whose send task is not run (the test runs it)."""
    with TestCase.captureOnCommitCallbacks(execute=False):
        return outbound_enqueue(delivery=make_delivery(), type="delivery.slot_booked", data=data or SLOT_DATA)


# --- O2: the row exists if and only if the change committed --------------------------------


def test_a_rolled_back_change_leaves_no_row_and_sends_nothing(backend: FakeRoutingBackend) -> None:
    delivery = make_delivery()
    for _ in range(100):
        with (
            TestCase.captureOnCommitCallbacks(execute=True) as callbacks,
            pytest.raises(Boom),
            transaction.atomic(),
        ):
            outbound_enqueue(delivery=delivery, type="delivery.slot_booked", data=SLOT_DATA)
            raise Boom
        assert callbacks == []
    assert OutboundEvent.objects.count() == 0
    assert backend.count() == 0


def test_a_committed_change_leaves_one_row_and_sends_it_once(backend: FakeRoutingBackend) -> None:
    with TestCase.captureOnCommitCallbacks(execute=True) as callbacks, transaction.atomic():
        row = outbound_enqueue(delivery=make_delivery(), type="delivery.slot_booked", data=SLOT_DATA)
    assert len(callbacks) == 1
    assert OutboundEvent.objects.count() == 1
    assert backend.ids() == [row.event_id]
    row.refresh_from_db()
    assert (row.status, row.attempts, row.last_error) == (OutboundStatus.SENT, 1, "")
    assert row.sent_at is not None


def test_a_broker_down_after_the_commit_loses_nothing_and_raises_nothing(
    backend: FakeRoutingBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    with monkeypatch.context() as patched:
        patched.setattr(outbound_send, "delay", broker_down)
        with TestCase.captureOnCommitCallbacks(execute=True), transaction.atomic():
            row = outbound_enqueue(delivery=make_delivery(), type="delivery.slot_booked", data=SLOT_DATA)
    assert OutboundEvent.objects.get().status == OutboundStatus.QUEUED
    assert backend.count() == 0

    assert outbound_sweep() == 1  # the beat sweeper, once the broker is back
    assert backend.ids() == [row.event_id]
    assert OutboundEvent.objects.get().status == OutboundStatus.SENT


# --- the wire format -----------------------------------------------------------------------


def test_the_body_matches_the_contract_examples_and_is_signed_with_the_outbound_secret(
    backend: FakeRoutingBackend, contract_examples: dict[str, Any]
) -> None:
    examples = contract_examples["outbound"]
    deliveries: dict[str, Any] = {}
    for example in examples:
        reference = example["data"]["reference"]
        delivery = deliveries.get(reference) or deliveries.setdefault(
            reference, make_delivery(reference=reference)
        )
        data = {key: value for key, value in example["data"].items() if key != "reference"}
        with TestCase.captureOnCommitCallbacks(execute=True):
            outbound_enqueue(delivery=delivery, type=example["type"], data=data)

    assert backend.count() == len(examples) == 3
    for example, request in zip(examples, backend.received, strict=True):
        assert request.headers["Content-Type"] == "application/json"
        request.verify(OUTBOUND_SECRET)
        with pytest.raises(signing.SignatureError):
            request.verify("some-other-secret")
        body = request.json
        assert list(body) == ["events"] and len(body["events"]) == 1
        event = body["events"][0]
        assert set(event) == {"id", "type", "occurred_at", "data"}
        assert EVENT_ID.fullmatch(event["id"])
        assert datetime.fromisoformat(event["occurred_at"]).tzinfo is not None
        assert event["type"] == example["type"]
        assert event["data"] == example["data"]
    assert len(set(backend.ids())) == 3  # one stable id per change


def test_datetimes_in_the_data_are_sent_as_rfc3339_strings(backend: FakeRoutingBackend) -> None:
    start = datetime(2026, 11, 22, 20, 0, tzinfo=UTC)
    slot = {"start": start, "end": start + timedelta(hours=2), "zone": "laredo-central"}
    with TestCase.captureOnCommitCallbacks(execute=True):
        outbound_enqueue(
            delivery=make_delivery(), type="delivery.slot_booked", data={**SLOT_DATA, "slot": slot}
        )
    sent = backend.received[0].json["events"][0]["data"]["slot"]
    assert datetime.fromisoformat(sent["start"]) == start
    assert datetime.fromisoformat(sent["end"]) == start + timedelta(hours=2)


@pytest.mark.parametrize(
    ("type", "data"),
    [
        ("delivery.cancelled", {}),
        ("delivery.slot_booked", {"slot": {}, "by": "customer"}),
        ("delivery.feedback", {"rating": 5, "comment": None, "extra": 1}),
    ],
)
def test_an_unknown_type_or_fields_off_contract_are_refused_before_anything_is_written(
    backend: FakeRoutingBackend, type: str, data: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        outbound_enqueue(delivery=make_delivery(), type=type, data=data)
    assert OutboundEvent.objects.count() == 0


# --- retries: full jitter in the database, then staff ------------------------------------


def test_backoff_grows_exponentially_with_full_jitter_under_the_cap() -> None:
    for attempts in range(0, 30):
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempts)
        samples = [backoff_delay(attempts) for _ in range(300)]
        assert all(0 <= sample <= ceiling for sample in samples)
        # Full jitter spreads over the whole range, not around the ceiling.
        assert min(samples) < 0.2 * ceiling and max(samples) > 0.8 * ceiling


def _fail_with(kind: str, backend: FakeRoutingBackend, settings: Any) -> str:
    """Make the next POST fail in the way `kind` says; return what last_error must mention."""
    if kind in ("500", "503", "302"):
        backend.status = int(kind)
        return f"HTTP {kind}"
    if kind == "timeout":
        backend.hang = True
        return "Timeout"
    settings.PORCHLIGHT_ROUTING_URL = f"http://127.0.0.1:{closed_port()}/events"
    return "ConnectionError"


@pytest.mark.parametrize("kind", ["500", "503", "302", "timeout", "refused"])
def test_a_failed_post_is_requeued_with_backoff_and_sent_when_the_backend_answers(
    backend: FakeRoutingBackend, settings: Any, kind: str
) -> None:
    with time_machine.travel(T0, tick=False) as clock:
        row = enqueue_unsent()
        expected_error = _fail_with(kind, backend, settings)

        delay = outbound_deliver(outbound_id=row.pk)

        row.refresh_from_db()
        assert row.status == OutboundStatus.QUEUED
        assert row.attempts == 1
        assert expected_error in row.last_error
        assert delay is not None and 0 <= delay <= BACKOFF_BASE * 2
        assert T0 <= row.next_attempt_at <= T0 + timedelta(seconds=BACKOFF_BASE * 2)
        assert row.next_attempt_at == T0 + timedelta(seconds=delay)

        backend.hang, backend.status = False, 200
        settings.PORCHLIGHT_ROUTING_URL = backend.url
        clock.move_to(row.next_attempt_at)
        assert outbound_deliver(outbound_id=row.pk) is None

    row.refresh_from_db()
    assert (row.status, row.attempts, row.last_error, row.sent_at) == (
        OutboundStatus.SENT,
        2,
        "",
        row.next_attempt_at,
    )
    assert backend.ids()[-1] == row.event_id


def test_a_redirect_is_not_followed(backend: FakeRoutingBackend) -> None:
    backend.status = 307
    row = enqueue_unsent()
    assert outbound_deliver(outbound_id=row.pk) is not None
    assert [request.path for request in backend.received] == ["/routing/events"]


def test_a_huge_error_page_is_cut_to_the_few_bytes_last_error_keeps(backend: FakeRoutingBackend) -> None:
    backend.status = 500
    backend.error_body = b"x" * (8 * 1024 * 1024)
    row = enqueue_unsent()
    outbound_deliver(outbound_id=row.pk)
    row.refresh_from_db()
    assert row.last_error == "HTTP 500: " + "x" * outbound.ERROR_BODY_BYTES


def test_a_row_is_not_tried_before_its_time(backend: FakeRoutingBackend) -> None:
    with time_machine.travel(T0, tick=False) as clock:
        row = enqueue_unsent()
        later = T0 + timedelta(seconds=100)
        OutboundEvent.objects.filter(pk=row.pk).update(next_attempt_at=later)
        clock.move_to(later - timedelta(seconds=5))
        assert outbound_due_ids() == []
        assert outbound_deliver(outbound_id=row.pk) is None
        assert backend.count() == 0
        clock.move_to(later)
        assert outbound_due_ids() == [row.pk]
        assert outbound_deliver(outbound_id=row.pk) is None
    assert backend.ids() == [row.event_id]


def test_it_retries_for_at_least_24_hours_then_flags_the_row_for_staff(backend: FakeRoutingBackend) -> None:
    assert django_settings.PORCHLIGHT_OUTBOUND_GIVE_UP_AFTER >= 24 * 3600
    give_up_at = T0 + timedelta(seconds=django_settings.PORCHLIGHT_OUTBOUND_GIVE_UP_AFTER)
    backend.status = 503
    gaps: list[float] = []
    with time_machine.travel(T0, tick=False) as clock:
        row = enqueue_unsent()
        while True:
            delay = outbound_deliver(outbound_id=row.pk)
            row.refresh_from_db()
            if row.status == OutboundStatus.FAILED:
                break
            assert row.status == OutboundStatus.QUEUED and delay is not None
            # Each gap is within [0, min(cap, base * 2^attempts)]: exponential, full jitter.
            assert 0 <= delay <= min(BACKOFF_CAP, BACKOFF_BASE * 2**row.attempts)
            gaps.append(delay)
            clock.move_to(row.next_attempt_at)
        failed_at = timezone.now()

    assert failed_at >= give_up_at >= T0 + timedelta(hours=24)
    assert failed_at - give_up_at <= timedelta(seconds=BACKOFF_CAP)
    assert row.attempts == backend.count() == len(gaps) + 1
    # About one try every cap/2 once capped: 26 h / 300 s is 312 tries; never a tight loop.
    assert 150 <= row.attempts <= 600, row.attempts
    print(f"\n{row.attempts} tries before giving up after {failed_at - T0}")
    assert "HTTP 503" in row.last_error
    assert outbound_due_ids() == []
    assert OutboundEvent.objects.filter(status=OutboundStatus.FAILED).count() == 1


def test_without_a_routing_url_rows_stay_queued(settings: Any, eager: None) -> None:
    settings.PORCHLIGHT_ROUTING_URL = ""
    with TestCase.captureOnCommitCallbacks(execute=True):
        row = outbound_enqueue(delivery=make_delivery(), type="delivery.slot_booked", data=SLOT_DATA)
    row.refresh_from_db()
    assert (row.status, row.attempts) == (OutboundStatus.QUEUED, 0)
    assert outbound_due_ids() == []
    assert outbound_sweep() == 0


def test_without_an_outbound_secret_nothing_unsigned_is_sent(
    backend: FakeRoutingBackend, settings: Any
) -> None:
    settings.PORCHLIGHT_OUTBOUND_SECRET = ""
    row = enqueue_unsent()
    assert outbound_deliver(outbound_id=row.pk) is not None
    row.refresh_from_db()
    assert row.status == OutboundStatus.QUEUED and "SECRET" in row.last_error
    assert backend.count() == 0


# --- leases: a dead sender, a late sender -------------------------------------------------


def test_a_row_whose_sender_died_mid_send_is_swept_and_sent_again(backend: FakeRoutingBackend) -> None:
    with time_machine.travel(T0, tick=False) as clock:
        row = enqueue_unsent()
        lease = T0 + timedelta(seconds=40)
        OutboundEvent.objects.filter(pk=row.pk).update(
            status=OutboundStatus.SENDING, attempts=1, lease_until=lease
        )

        assert outbound_due_ids() == []  # its sender may still be at work
        assert outbound_deliver(outbound_id=row.pk) is None
        assert backend.count() == 0

        clock.move_to(lease + timedelta(seconds=1))
        assert outbound_due_ids() == [row.pk]
        assert outbound_sweep() == 1
    row.refresh_from_db()
    assert (row.status, row.attempts, row.lease_until) == (OutboundStatus.SENT, 2, None)
    assert backend.ids() == [row.event_id]


def test_a_sweep_hands_a_row_out_once_per_grace_period_while_no_worker_takes_it(
    backend: FakeRoutingBackend,
) -> None:
    with time_machine.travel(T0, tick=False) as clock:
        row = enqueue_unsent()
        assert outbound_dispatch_due() == [row.pk]
        # The worker is down: sweeps every 30 s do not pile up copies of the task.
        for _ in range(3):
            clock.shift(30)
            assert outbound_dispatch_due() == []
        clock.move_to(T0 + DISPATCH_GRACE + timedelta(seconds=1))
        assert outbound_dispatch_due() == [row.pk]
        # A worker that takes the handed-out row sends it at once.
        assert outbound_deliver(outbound_id=row.pk) is None
    row.refresh_from_db()
    assert (row.status, row.attempts, row.lease_until) == (OutboundStatus.SENT, 1, None)
    assert backend.ids() == [row.event_id]


def test_a_late_failure_from_a_sender_presumed_dead_is_ignored(
    backend: FakeRoutingBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = enqueue_unsent()
    real_post = outbound._post

    def slow_sender(claimed: OutboundEvent) -> str | None:
        error = real_post(claimed)
        # Meanwhile its lease ran out and a sweep put the row back in the queue.
        OutboundEvent.objects.filter(pk=claimed.pk).update(lease_until=timezone.now() - timedelta(seconds=1))
        assert outbound_dispatch_due() == [claimed.pk]
        return error

    backend.status = 503
    monkeypatch.setattr(outbound, "_post", slow_sender)
    assert outbound_deliver(outbound_id=row.pk) is None
    row.refresh_from_db()
    assert (row.status, row.attempts, row.last_error) == (OutboundStatus.QUEUED, 1, "")
    assert row.lease_until is not None  # handed to a new worker, which will try again


def test_a_late_failure_does_not_undo_the_send_of_the_worker_that_took_over(
    backend: FakeRoutingBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = enqueue_unsent()
    real_post = outbound._post

    def slow_sender(claimed: OutboundEvent) -> str | None:
        error = real_post(claimed)
        # Meanwhile our lease ran out and another worker sent the row.
        OutboundEvent.objects.filter(pk=claimed.pk).update(status=OutboundStatus.SENT, attempts=2)
        return error

    backend.status = 503
    monkeypatch.setattr(outbound, "_post", slow_sender)
    assert outbound_deliver(outbound_id=row.pk) is None
    row.refresh_from_db()
    assert (row.status, row.last_error) == (OutboundStatus.SENT, "")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_same_send_run_by_ten_threads_at_once_posts_once(
    settings: Any, backend: FakeRoutingBackend
) -> None:
    settings.PORCHLIGHT_ROUTING_URL = ""  # the rows are written first, not sent on commit
    delivery = make_delivery()
    rows = [
        outbound_enqueue(delivery=delivery, type="delivery.feedback", data={"rating": 4, "comment": None})
        for _ in range(50)
    ]
    settings.PORCHLIGHT_ROUTING_URL = backend.url
    barrier = threading.Barrier(10)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for row in rows:
                barrier.wait(timeout=30)
                assert outbound_send.apply((row.pk,)).get() is None
        except BaseException as exc:  # reported to the test below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert sorted(backend.ids()) == sorted(row.event_id for row in rows)  # 1 POST per id, 500 runs
    assert set(OutboundEvent.objects.values_list("status", "attempts")) == {(OutboundStatus.SENT, 1)}


# --- O9: nothing waits in Celery beyond a short countdown ---------------------------------


def test_a_send_never_schedules_a_celery_countdown_longer_than_60_seconds(
    backend: FakeRoutingBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[dict[str, Any]] = []
    monkeypatch.setattr(outbound_send, "apply_async", lambda *args, **kwargs: published.append(kwargs))
    backend.status = 503
    waited_in_db = 0
    with time_machine.travel(T0, tick=False) as clock:
        row = enqueue_unsent()
        for _ in range(15):
            outbound_send(row.pk)  # as a worker runs it
            row.refresh_from_db()
            delay = (row.next_attempt_at - timezone.now()).total_seconds()
            if delay > SHORT_WAIT:
                waited_in_db += 1
            clock.move_to(row.next_attempt_at)
    assert published and all(0 <= call["countdown"] <= SHORT_WAIT for call in published)
    assert set(published[0]) == {"countdown"}  # never an eta
    assert len(published) + waited_in_db == 15
    assert django_settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] > SHORT_WAIT


def _bounded(node: ast.expr, constants: dict[str, float], guards: list[ast.expr] | None = None) -> bool:
    """Whether a countdown expression is provably at most SHORT_WAIT seconds: a small
    constant, min(..., small), or a name that an enclosing `if name <= small` guards."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value <= SHORT_WAIT
    if isinstance(node, ast.Name):
        if constants.get(node.id, SHORT_WAIT + 1) <= SHORT_WAIT:
            return True
        return any(_guards_name(guard, node.id, constants) for guard in guards or [])
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "min":
        return any(_bounded(arg, constants, guards) for arg in node.args)
    return False


def _guards_name(test: ast.expr, name: str, constants: dict[str, float]) -> bool:
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return any(_guards_name(value, name, constants) for value in test.values)
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == name
        and isinstance(test.ops[0], ast.Lt | ast.LtE)
        and _bounded(test.comparators[0], constants)
    )


def _numeric_constants(tree: ast.Module) -> dict[str, float]:
    constants: dict[str, float] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and isinstance(node.value.value, int | float):
                    constants[target.id] = node.value.value
    return constants


# Calls that take Celery scheduling options: apply_async, retry, signatures, task decorators.
CELERY_CALLS = frozenset(
    {"apply_async", "retry", "signature", "s", "si", "set", "send_task", "task", "shared_task"}
)
WAIT_OPTIONS = frozenset({"countdown", "eta", "retry_backoff_max", "default_retry_delay"})


def _celery_schedule_problems(
    call: ast.Call, constants: dict[str, float], guards: list[ast.expr] | None = None
) -> list[str]:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name not in CELERY_CALLS:
        return []
    options = {keyword.arg: keyword.value for keyword in call.keywords if keyword.arg}
    problems = [
        f"{option}={ast.unparse(value)}"
        for option, value in options.items()
        if option in WAIT_OPTIONS and (option == "eta" or not _bounded(value, constants, guards))
    ]
    if "retry_backoff" in options and "retry_backoff_max" not in options:
        problems.append("retry_backoff without retry_backoff_max (Celery's default is 600 s)")
    if name == "retry" and "countdown" not in options and "eta" not in options:
        problems.append("retry() without countdown (Celery's default_retry_delay is 180 s)")
    return problems


def _calls_with_guards(
    node: ast.AST, guards: tuple[ast.expr, ...] = ()
) -> Iterator[tuple[ast.Call, list[ast.expr]]]:
    """Every call in `node`, with the tests of the `if` statements whose body holds it."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Call):
            yield child, list(guards)
        inner = (*guards, child.test) if isinstance(child, ast.If) else guards
        if isinstance(child, ast.If):
            for statement in child.body:
                yield from _calls_with_guards(ast.Module(body=[statement], type_ignores=[]), inner)
            for statement in child.orelse:
                yield from _calls_with_guards(ast.Module(body=[statement], type_ignores=[]), guards)
        else:
            yield from _calls_with_guards(child, guards)


def test_no_code_schedules_a_celery_task_beyond_60_seconds() -> None:
    """RELIABILITY O9: long waits live in next_attempt_at, never in countdown= or eta=."""
    offenders: list[str] = []
    checked = 0
    for app in ("config", "tracking", "notifications", "scheduling"):
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            constants = _numeric_constants(tree)
            for node, guards in _calls_with_guards(tree):
                problems = _celery_schedule_problems(node, constants, guards)
                checked += any(k.arg in WAIT_OPTIONS for k in node.keywords)
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {p}" for p in problems]
    assert offenders == [], "schedule long waits in the database (next_attempt_at), not in Celery"
    assert checked >= 1  # the scan does see the outbox's own countdown


def test_the_static_check_catches_long_or_unbounded_waits() -> None:
    source = """
LONG = 3600
SHORT = 30
task.apply_async((1,), countdown=LONG)
task.apply_async((1,), countdown=delay)
task.apply_async((1,), eta=when)
self.retry(exc=exc)
shared_task(autoretry_for=(E,), retry_backoff=True)
task.apply_async((1,), countdown=min(delay, SHORT))
task.apply_async((1,), countdown=5)
event(eta=eta)
if delay is not None and delay <= SHORT:
    task.apply_async((1,), countdown=delay)
else:
    task.apply_async((1,), countdown=delay)
"""
    tree = ast.parse(source)
    constants = _numeric_constants(tree)
    found = [
        f"{node.lineno} {problem}"
        for node, guards in _calls_with_guards(tree)
        for problem in _celery_schedule_problems(node, constants, guards)
    ]
    assert [line.split()[0] for line in found] == ["4", "5", "6", "7", "8", "15"], found


def test_the_beat_sweeper_runs_well_within_the_visibility_timeout() -> None:
    sweep = django_settings.CELERY_BEAT_SCHEDULE["outbound-sweep"]
    assert sweep["task"] == f"{tasks.__name__}.outbound_sweep"
    assert float(sweep["schedule"]) <= SHORT_WAIT  # type: ignore[arg-type]
