"""O1 (RELIABILITY.md) and issue #7's "Redis stopped while events arrive": the broker's Redis
is killed (-9, no persistence) and status changes keep coming through the intake. Real daphne,
Celery worker, PostgreSQL and a redis-server of our own.

Scaled for CI: 100 status changes (one per request, 10 at a time) instead of 500, and Redis
comes back 5 s after the kill instead of 60 s. Live pushes after a Redis restart are S3's
(tests/scale/test_ws_redis_restart.py); this test is about the intake and the messages.

The control is in the same run: once Redis is back, the broker holds no task at all (the
publishes at commit failed) and with a worker running but no sweeper nothing is sent. That is
what a plain `delay_on_commit` without the outbox would have lost: all 100. Then beat's sweep
sends every message, once.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.utils import timezone

from notifications.models import Notification
from notifications.tasks import notifications_sweep
from tests.chaos.servers import beat_to, intake, on_redis, provider_calls, redis_server, wait_stable
from tests.notifications.conftest import make_delivery, status
from tests.services import celery_worker, daphne, wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.chaos,
    pytest.mark.django_db(transaction=True),
]

CHANGES = 100
OUTAGE = 5.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_status_changes_while_redis_is_down_are_stored_and_each_message_is_sent_once_after(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    deliveries = [make_delivery(email="") for _ in range(CHANGES)]
    at = timezone.now() + timedelta(seconds=1)
    with redis_server(tmp_path / "redis") as broker:
        env = on_redis(broker, SMS_BACKEND="tests.chaos.providers.SMSBackend", SLOW_PROVIDER_PATH=str(calls),
                       SLOW_PROVIDER_SECONDS="0")  # fmt: skip
        with daphne(**env) as base, intake(base) as routing, celery_worker(**env):
            broker.kill9()
            killed = time.monotonic()

            def post(reference: str) -> tuple[int, float]:
                started = time.monotonic()
                response = routing.post(status(reference, "out_for_delivery", at=at))
                return response.status_code, time.monotonic() - started

            with ThreadPoolExecutor(max_workers=10) as pool:
                answers = list(pool.map(post, [d.reference for d in deliveries]))
            codes = [code for code, _ in answers]
            latencies = [seconds for _, seconds in answers]
            assert codes == [200] * CHANGES  # 100/100 answered 200 while Redis was down
            pending = Notification.objects.filter(kind="out_for_delivery", status="queued", attempts=0)
            assert pending.count() == CHANGES  # stored, in the outbox

            time.sleep(max(0.0, killed + OUTAGE - time.monotonic()))  # the outage lasts OUTAGE s
            broker.start()
            back = time.monotonic()
            # Control: every publish at commit was lost with Redis; no task waits in the broker,
            # and a running worker sends nothing by itself.
            assert broker.client().llen("celery") == 0
            unsent = wait_stable(lambda: sum(provider_calls(calls).values()), quiet=3, timeout=30)
            assert unsent == 0
            with beat_to(broker.url, notifications_sweep, every=1.0):
                wait_for(
                    lambda: (
                        Notification.objects.filter(kind="out_for_delivery", status="sent").count() == CHANGES
                    ),
                    timeout=60,
                    what="every message sent",
                )
                delivered = time.monotonic() - back
    counted = provider_calls(calls)
    assert len(counted) == CHANGES and set(counted.values()) == {1}  # 100 messages, each once
    assert delivered <= 60
    p99 = percentile(latencies, 0.99)
    assert p99 < 1.0, f"intake p99 {p99:.2f} s while Redis was down"
    p50 = percentile(latencies, 0.5)
    print(
        f"\nO1: {CHANGES}/{CHANGES} answered 200 while Redis was down (p50 {p50:.3f} s, p99 {p99:.3f} s); "
        f"control without the sweeper: {unsent} sent, broker queue empty; with it all {CHANGES} "
        f"sent once, {delivered:.1f} s after Redis was back (3 s of it the control's wait)"
    )
