"""O5 (RELIABILITY.md): 40 sends queued in Redis, Redis killed -9 and restarted. Real daphne,
Celery worker, PostgreSQL and redis-servers of our own.

- With AOF (`appendfsync everysec`) the queue survives: 40/40 sent by the worker alone.
- Without persistence the queue is gone (the raw-Celery control: 40/40 tasks lost, nothing
  is sent), the liveness check (`manage.py check_queues`) reports it stuck, and beat's sweep
  delivers 40/40 from the outbox.

Scaled for CI: the liveness threshold is 3 s instead of 60.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from notifications.models import Notification
from notifications.tasks import notifications_sweep
from tests.chaos.servers import (
    RedisServer,
    beat_to,
    intake,
    on_redis,
    provider_calls,
    redis_server,
    wait_stable,
)
from tests.notifications.conftest import upsert
from tests.services import celery_worker, daphne, wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.chaos,
    pytest.mark.django_db(transaction=True),
]

SENDS = 40
STUCK_AFTER = 3.0


@contextmanager
def queued_then_crashed(tmp_path, *, appendonly: bool, tag: str) -> Iterator[Crash]:
    """40 intake requests (one task each) while no worker runs, then kill -9 and restart Redis."""
    calls = tmp_path / f"calls-{tag}"
    calls.mkdir()
    with redis_server(tmp_path / f"redis-{tag}", appendonly=appendonly) as broker:
        env = on_redis(broker, SMS_BACKEND="tests.chaos.providers.SMSBackend", SLOW_PROVIDER_PATH=str(calls))
        with daphne(**env) as base, intake(base) as routing:
            now = timezone.now()
            for n in range(SENDS):
                assert routing.post(upsert(f"{tag}-{n}", at=now)).status_code == 200
        assert broker.client().llen("celery") == SENDS
        if appendonly:
            time.sleep(1.5)  # appendfsync everysec: what is older than a second is on disk
        broker.kill9()
        fault = time.monotonic()
        broker.start()
        yield Crash(broker, env, calls, fault)


@dataclass
class Crash:
    broker: RedisServer
    env: dict[str, str]
    calls: Path
    fault: float


def sent(tag: str) -> int:
    return Notification.objects.filter(delivery__reference__startswith=f"{tag}-", status="sent").count()


def test_with_aof_the_queued_sends_survive_a_redis_kill(tmp_path):
    with queued_then_crashed(tmp_path, appendonly=True, tag="AOF") as crash:
        assert crash.broker.client().llen("celery") == SENDS  # replayed from the append-only file
        with celery_worker(**crash.env):  # no sweeper: the tasks themselves survived
            wait_for(lambda: sent("AOF") == SENDS, timeout=60, what="40 sent")
            done = time.monotonic() - crash.fault
    counted = provider_calls(crash.calls)
    assert len(counted) == SENDS and set(counted.values()) == {1}
    print(f"\nO5 AOF: {SENDS}/{SENDS} sent, all done {done:.1f} s after the fault")


def test_without_persistence_the_queue_is_lost_the_check_sees_it_and_the_sweeper_sends_all(tmp_path, capsys):
    with queued_then_crashed(tmp_path, appendonly=False, tag="RAW") as crash:
        assert crash.broker.client().llen("celery") == 0  # every queued task is gone
        with celery_worker(**crash.env):
            # Control (raw Celery): with a worker and no outbox sweep, nothing is ever sent.
            lost = SENDS - wait_stable(lambda: sent("RAW"), quiet=STUCK_AFTER + 0.5, timeout=30)
            assert lost == SENDS
            with pytest.raises(CommandError, match="stuck: notifications"):
                call_command("check_queues", "--stuck-after", str(STUCK_AFTER))
            detected = time.monotonic() - crash.fault
            with beat_to(crash.broker.url, notifications_sweep, every=1.0):
                wait_for(lambda: sent("RAW") == SENDS, timeout=60, what="40 sent by the sweeper")
                done = time.monotonic() - crash.fault
            call_command("check_queues", "--stuck-after", str(STUCK_AFTER))
    assert capsys.readouterr().out.startswith("ok: notifications: 0 due")
    counted = provider_calls(crash.calls)
    assert len(counted) == SENDS and set(counted.values()) == {1}
    print(
        f"\nO5 no persistence: raw Celery lost {lost}/{SENDS}; check_queues reported it stuck "
        f"{detected:.1f} s after the fault; the sweeper sent {SENDS}/{SENDS}, all done {done:.1f} s after"
    )
