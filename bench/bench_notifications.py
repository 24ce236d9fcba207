"""Notifications on the production stack: how fast one Celery worker sends messages, against a
no-op task drained by the same worker in the same run, and whether each rule firing is one
message (counted: rows, provider calls, duplicates).

PostgreSQL (a fresh database) + Redis, daphne for the intake, one Celery worker
(concurrency 2) with the file-based SMS and email backends. Each round, interleaved:
- no-op: N tasks published while the worker's consumer is paused, then timed from resuming
  the consumer until the queue and the unacked set are empty;
- notifications: deliveries created through the intake (their "order received" rows are set
  aside so that they do not blur the figure), then CHANGES status changes posted in batches
  (one real change per delivery: out for delivery, delivered or attempt failed; a quarter of
  them repeated under a new event id, which must fire nothing; every batch posted twice, the
  second time all duplicates), and the worker timed from resuming until every message is sent.

The worker imports this module (celery -I) for its no-op task, so nothing runs on import.

Knobs (environment): BENCH_ROUNDS (3), BENCH_NOTIFY_CHANGES (10000), BENCH_NOTIFY_REDIS_URL
(the broker of this benchmark alone, default Redis db 8: a worker of another benchmark on the
shared bench db would take these tasks and run them against its own database).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

from config.celery import app

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CHANGES = int(os.environ.get("BENCH_NOTIFY_CHANGES", "10000"))
DELIVERIES = CHANGES * 4 // 5  # the other fifth are repeats that must send nothing
BATCH = 500
CHANGE_BATCH = 400  # with a repeat for every fourth: 500 events, the intake's limit
GOAL_RATIO = 0.7
QUEUE = "celery"
BROKER_URL = os.environ.get("BENCH_NOTIFY_REDIS_URL", "redis://127.0.0.1:6379/8")
SWEEP_EVERY = 30.0  # as beat does in production (NOTIFY_SWEEP_INTERVAL)
DRAIN_TIMEOUT = 600.0


@app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    """The baseline: what the worker costs per task when the task does nothing."""


_ids = count()
_epoch = datetime.now(UTC) - timedelta(hours=1)
_clock = count()


def _at() -> str:
    return (_epoch + timedelta(milliseconds=next(_clock))).isoformat()


def _reference(round_number: int, n: int) -> str:
    return f"NB{round_number}-{n:05d}"


def _upsert(round_number: int, n: int) -> dict[str, Any]:
    customer: dict[str, Any] = {"name": f"Customer {n}", "locale": "es" if n % 3 == 0 else "en"}
    if n % 10 == 0:
        customer["email"] = f"r{round_number}c{n}@example.com"  # a tenth have no phone: email
    else:
        customer["phone"] = f"+1956{round_number % 10}{n:06d}"
    return {
        "id": f"nb-up-{next(_ids)}",
        "type": "delivery.upserted",
        "occurred_at": _at(),
        "data": {
            "reference": _reference(round_number, n),
            "customer": customer,
            "address": {
                "line1": f"{n} Main St", "city": "Laredo", "postcode": "78040", "country": "US",
                "lat": 27.5, "lon": -99.5,
            },
            "timezone": "America/Chicago",
        },
    }  # fmt: skip


CHANGE_STATUSES = ("out_for_delivery", "delivered", "attempt_failed")


def _status(round_number: int, n: int, status: str) -> dict[str, Any]:
    return {
        "id": f"nb-st-{next(_ids)}",
        "type": "delivery.status",
        "occurred_at": _at(),
        "data": {"reference": _reference(round_number, n), "status": status},
    }


# --- the worker and its consumer -----------------------------------------------------------------


@contextmanager
def _worker(env: dict[str, str]) -> Iterator[None]:
    from bench.common import LOGS, process

    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / "celery-notifications.log"
    log_path.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "celery", "-A", "config", "worker", "-I", "bench.bench_notifications",
        "--loglevel=WARNING", "--concurrency=2", "--without-gossip", "--without-mingle",
        "-n", f"bench-notify-{os.getpid()}@%h",
    ]  # fmt: skip

    def ready() -> bool:
        # At WARNING the worker says nothing when ready: ask it.
        try:
            return bool(app.control.ping(timeout=0.5))
        except Exception:
            return False

    with process(command, env=env, name="celery-notifications", ready=ready):
        yield


def _pause() -> None:
    app.control.cancel_consumer(QUEUE, reply=True, timeout=5)


def _resume() -> None:
    app.control.add_consumer(QUEUE, reply=True, timeout=5)


def _broker_idle(broker: Any) -> bool:
    return broker.llen(QUEUE) == 0 and broker.hlen("unacked") == 0


# --- the two variants ----------------------------------------------------------------------------


def run_noop(broker: Any, n_tasks: int) -> dict[str, float]:
    _pause()
    with app.producer_or_acquire() as producer:
        for _ in range(n_tasks):
            noop.apply_async(producer=producer)
    started = time.perf_counter()
    _resume()
    _wait(lambda: _broker_idle(broker), what="the no-op queue to drain")
    elapsed = time.perf_counter() - started
    return {"rate": n_tasks / elapsed, "elapsed": elapsed, "tasks": n_tasks}


def run_notifications(
    url: str, db: str, broker: Any, round_number: int, folders: dict[str, Path]
) -> dict[str, float]:
    from bench.common import event_request, post, sql

    _pause()
    for start in range(0, DELIVERIES, BATCH):
        _post_ok(
            post,
            url,
            event_request(
                {"events": [_upsert(round_number, n) for n in range(start, min(start + BATCH, DELIVERIES))]}
            ),
        )
    # The "order received" messages are real, but not what this round measures: set them aside.
    broker.delete(QUEUE)
    sql(
        db,
        "UPDATE notifications_notification SET status = 'skipped', last_error = 'bench: set aside' "
        "WHERE kind = 'received' AND status = 'queued'",
    )
    before_sms, before_mail = _sms_files(folders["sms"]), _emails(folders["mail"])
    changes = 0
    expected = 0
    for start in range(0, DELIVERIES, CHANGE_BATCH):
        events = []
        for n in range(start, min(start + CHANGE_BATCH, DELIVERIES)):
            status = CHANGE_STATUSES[n % len(CHANGE_STATUSES)]
            events.append(_status(round_number, n, status))
            expected += 1
            if n % 4 == 0:  # the same status again under a new id: a change, but no new firing
                events.append(_status(round_number, n, status))
        changes += len(events)
        request = event_request({"events": events})
        _post_ok(post, url, request)
        _post_ok(post, url, request)  # every event again: duplicates
    prefix = f"NB{round_number}-%"
    counts = """SELECT count(*) FILTER (WHERE n.status = 'sent'),
                        count(*) FILTER (WHERE n.status IN ('queued', 'sending')), count(*)
                 FROM notifications_notification n JOIN tracking_delivery d ON d.id = n.delivery_id
                 WHERE d.reference LIKE %s AND n.kind <> 'received'"""
    started = time.perf_counter()
    _resume()
    _wait(
        lambda: sql(db, counts, [prefix])[0][1] == 0 and _broker_idle(broker), what="the messages to be sent"
    )
    elapsed = time.perf_counter() - started
    sent, pending, rows = sql(db, counts, [prefix])[0]
    calls = (_sms_files(folders["sms"]) - before_sms) + (_emails(folders["mail"]) - before_mail)
    return {
        "rate": sent / elapsed, "elapsed": elapsed, "changes": changes, "expected": expected, "rows": rows,
        "sent": sent, "pending": pending, "calls": calls,
    }  # fmt: skip


def _report_round(round_number: int, noop: dict[str, float], send: dict[str, float]) -> None:
    print(
        f"  round {round_number + 1}: no-op {noop['rate']:,.0f}/s, messages {send['rate']:,.0f}/s "
        f"({int(send['sent'])} sent of {int(send['expected'])} firings, {int(send['changes'])} changes)",
        flush=True,
    )


def _post_ok(post: Any, url: str, request: Any) -> None:
    status, body = post(url, request)
    if status != 200:
        raise SystemExit(f"intake answered {status}: {body[:300]!r}")


def _wait(condition: Any, *, what: str) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def _sms_files(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.txt")) if folder.exists() else 0


def _emails(folder: Path) -> int:
    # Django's file-based backend appends messages to files, each followed by a line of 79 dashes.
    if not folder.exists():
        return 0
    return sum(path.read_bytes().count(b"\n" + b"-" * 79 + b"\n") for path in folder.iterdir())


def main() -> int:
    from bench.common import (
        Row,
        daphnes,
        fresh_database,
        median,
        print_table,
        ratios,
        redis_flush,
        require,
        server_env,
    )

    require(postgres=True, redis=True)
    import redis

    # This process only publishes and controls: Celery reads its broker from the Django settings.
    os.environ.update(DJANGO_SETTINGS_MODULE="bench.settings", REDIS_URL=BROKER_URL)
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-secret-key-not-for-production")

    broker = redis.Redis.from_url(BROKER_URL)
    with (
        fresh_database("notifications") as db,
        tempfile.TemporaryDirectory(prefix="porchlight-bench-notify-") as tmp,
    ):
        redis_flush(BROKER_URL)
        folders = {"sms": Path(tmp) / "sms", "mail": Path(tmp) / "mail"}
        env = server_env(
            database_url=db,
            redis_url=BROKER_URL,
            SMS_BACKEND="notifications.backends.filebased.SMSBackend",
            SMS_FILE_PATH=str(folders["sms"]),
            EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
            EMAIL_FILE_PATH=str(folders["mail"]),
            NOTIFY_QUIET_HOURS="",  # the run may fall at night where the customers live
        )
        with daphnes(1, env=env) as [url], _worker(env):
            noops: list[dict[str, float]] = []
            sends: list[dict[str, float]] = []
            for round_number in range(ROUNDS):  # interleaved: no-op, notifications, no-op, ...
                noops.append(run_noop(broker, CHANGES))
                sends.append(run_notifications(url, db, broker, round_number, folders))
                _report_round(round_number, noops[-1], sends[-1])
    ratio = median(ratios([s["rate"] for s in sends], [n["rate"] for n in noops]))
    extra = sum(int(s["rows"] - s["expected"]) for s in sends)
    lost = sum(int(s["expected"] - s["sent"]) for s in sends)
    duplicate_calls = sum(int(s["calls"] - s["sent"]) for s in sends)
    detail = f"{ROUNDS} rounds, {CHANGES:,} status changes each"
    print_table(
        "Notifications (one worker, concurrency 2, file-based backends)",
        [
            Row("no-op tasks", median([n["rate"] for n in noops]), "tasks/s", detail=detail),
            Row("messages sent", median([s["rate"] for s in sends]), "msg/s", detail=detail),
            Row(
                "messages / no-op",
                ratio,
                "x",
                goal=f">= {GOAL_RATIO}x",
                met=ratio >= GOAL_RATIO,
                detail="median of per-round ratios",
            ),
            Row("rows beyond one per firing", extra, "rows", goal="== 0", met=extra == 0),
            Row("firings not sent", lost, "msgs", goal="== 0", met=lost == 0),
            Row(
                "provider calls beyond one per message",
                duplicate_calls,
                "calls",
                goal="== 0",
                met=duplicate_calls == 0,
            ),
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
