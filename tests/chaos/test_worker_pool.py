"""O4 (RELIABILITY.md): one pool child killed mid-send, and a poison message that kills its
sender every time. Real daphne, Celery worker, PostgreSQL and a redis-server of our own.

Scaled for CI: 40 messages instead of a load run; the poison's N is RELIABILITY's 5.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from django.utils import timezone

from notifications.models import Notification
from notifications.tasks import notifications_sweep
from tests.chaos.servers import (
    beat_to,
    intake,
    on_redis,
    provider_calls,
    redis_server,
    wait_stable,
    worker_log,
)
from tests.notifications.conftest import upsert
from tests.processes import children
from tests.services import celery_worker, daphne, wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.chaos,
    pytest.mark.django_db(transaction=True),
]

POISON = "+19565550199"


def provider_env(folder, **extra: str) -> dict[str, str]:
    folder.mkdir(exist_ok=True)
    return {"SMS_BACKEND": "tests.chaos.providers.SMSBackend", "SLOW_PROVIDER_PATH": str(folder), **extra}


def test_a_pool_child_killed_mid_send_is_requeued_within_ten_seconds_and_nothing_is_lost(tmp_path):
    """Two intake batches of 20 (two tasks of 20 messages, 0.2 s per provider call), one pool
    child SIGKILLed once calls are under way. No beat runs: what recovers the messages is
    Celery's requeue of the lost task (reject_on_worker_lost) and the redelivered task taking
    back the rows it leased (lease owner = task id), not the sweeper."""
    calls = tmp_path / "calls"
    with redis_server(tmp_path / "redis") as broker:
        env = on_redis(broker, **provider_env(calls, SLOW_PROVIDER_SECONDS="0.2"))
        with daphne(**env) as base, intake(base) as routing, celery_worker(concurrency=2, **env) as worker:
            now = timezone.now()
            for batch in range(2):
                events = [upsert(f"POOL-{batch}-{n}", at=now) for n in range(20)]
                assert routing.post(events).status_code == 200
            wait_for(lambda: sum(provider_calls(calls).values()) >= 6, timeout=30, what="sends under way")
            victim = children(worker.pid)[0]
            os.kill(victim, signal.SIGKILL)
            killed, killed_at = time.monotonic(), time.time()
            in_flight = set(Notification.objects.filter(status="sending").values_list("pk", flat=True))
            wait_for(
                lambda: Notification.objects.filter(status="sent").count() == 40,
                timeout=30,
                what="all 40 messages sent",
            )
            recovery = time.monotonic() - killed
            log = worker_log(worker)
    counted = provider_calls(calls)
    assert len(counted) == 40  # 40/40 reached the provider
    repeated = {pk: n for pk, n in counted.items() if n > 1}
    # Only the message the dead child was sending may go twice (accepted, then the crash).
    assert len(repeated) <= 1 and set(repeated) <= in_flight
    assert all(n == 2 for n in repeated.values())
    assert "signal 9" in log  # the pool child really died, and the worker carried on
    # Requeue: from the kill to the second provider call of the message the dead child held
    # (the redelivered task takes its messages back one at a time, that one first).
    (twice,) = repeated or {0: 0}
    stamps = sorted(p.stat().st_mtime for p in calls.iterdir() if p.name.startswith(f"{twice}-"))
    requeue = stamps[-1] - killed_at if repeated else 0.0
    assert requeue <= 10, f"requeued {requeue:.1f} s after the kill"
    assert recovery <= 20, f"all sent {recovery:.1f} s after the kill"
    print(
        f"\nO4 pool child: the dead child's message sent again {requeue:.1f} s after the kill; all 40 "
        f"sent {recovery:.1f} s after it; sent twice: {len(repeated)}"
    )


def test_a_poison_message_that_kills_its_sender_is_dead_after_exactly_five_attempts(tmp_path, admin_client):
    """Ten messages in one task, the fifth to a number whose send SIGKILLs the worker's pool
    child every time. The attempt is counted when the row is claimed, before the call, so the
    kills count; after 5 the row is dead (an ERROR line, the admin's dead list) and the other
    nine go out once each. The sweeper runs (every second) as beat would: no infinite loop."""
    calls = tmp_path / "calls"
    env_extra = provider_env(calls, SLOW_PROVIDER_SECONDS="0.05", POISON_TO=POISON, NOTIFY_MAX_ATTEMPTS="5",
                             NOTIFY_LEASE_SECONDS="3")  # fmt: skip
    with redis_server(tmp_path / "redis") as broker:
        env = on_redis(broker, **env_extra)
        with daphne(**env) as base, intake(base) as routing, celery_worker(concurrency=1, **env) as worker:
            now = timezone.now()
            phones = {4: {"phone": POISON}}
            events = [upsert(f"POISON-{n}", at=now, **phones.get(n, {})) for n in range(10)]
            with beat_to(broker.url, notifications_sweep, every=1.0):
                assert routing.post(events).status_code == 200
                poison = wait_for(
                    lambda: Notification.objects.filter(recipient=POISON, status="dead").first(),
                    timeout=60,
                    what="the poison message dead",
                )
                wait_for(
                    lambda: Notification.objects.filter(status="sent").count() == 9,
                    timeout=30,
                    what="the nine others sent",
                )
                # Dead is final: over three sweeps, the sweeper and redeliveries make no further call.
                wait_stable(lambda: sum(provider_calls(calls).values()), quiet=3, timeout=30)
            log = worker_log(worker)
    counted = provider_calls(calls)
    assert poison.attempts == 5
    assert counted[poison.pk] == 5
    others = {pk: n for pk, n in counted.items() if pk != poison.pk}
    assert len(others) == 9 and set(others.values()) == {1}
    assert log.count("exited with 'signal 9") == 5  # five sends, five dead pool children
    assert f"notification {poison.pk} is dead" in log and "ERROR" in log
    page = admin_client.get("/admin/notifications/notification/?status__exact=dead")
    assert POISON in page.content.decode()
    print(f"\nO4 poison: dead after {poison.attempts} attempts, {counted[poison.pk]} provider calls; "
          f"others: {sorted(others.values())}")  # fmt: skip
