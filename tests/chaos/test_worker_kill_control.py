"""O3's control (RELIABILITY.md): the same worker kill with Celery's default delivery settings
loses messages, with ours it loses none. No sweeper runs in either, so the difference is the
settings alone (tests/notifications/test_worker_kill.py is O3 itself, with the sweeper).

Scaled for CI: 12 tasks of 3 messages (RELIABILITY measured 4 of 12 tasks lost), one kill of
the whole worker group, a visibility timeout of 3 s instead of 300 in both runs.
"""

from __future__ import annotations

import pytest
from django.utils import timezone

from notifications.models import Notification
from tests.chaos.servers import intake, on_redis, provider_calls, redis_server, wait_stable
from tests.notifications.conftest import upsert
from tests.processes import kill_group
from tests.services import celery_worker, daphne, wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.chaos,
    pytest.mark.django_db(transaction=True),
]

TASKS, PER_TASK = 12, 3
VISIBILITY_TIMEOUT = 3


def kill_the_worker_mid_send(tmp_path, *, app: str, tag: str) -> tuple[int, int]:
    """Queue 12 tasks, kill the worker group once sends are under way, start a fresh worker and
    wait until nothing moves any more. Returns (messages that never reached the provider,
    messages sent twice)."""
    calls = tmp_path / f"calls-{tag}"
    calls.mkdir()
    env = {
        "SMS_BACKEND": "tests.chaos.providers.SMSBackend",
        "SLOW_PROVIDER_PATH": str(calls),
        "SLOW_PROVIDER_SECONDS": "0.2",
        "NOTIFY_LEASE_SECONDS": "3",
        "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    }
    with redis_server(tmp_path / f"redis-{tag}") as broker:
        env = on_redis(broker, **env)
        with daphne(**env) as base, intake(base) as routing:
            now = timezone.now()
            for task in range(TASKS):
                events = [upsert(f"{tag}-{task}-{n}", at=now) for n in range(PER_TASK)]
                assert routing.post(events).status_code == 200
        with celery_worker(app=app, concurrency=2, **env) as worker:
            wait_for(lambda: sum(provider_calls(calls).values()) >= 4, timeout=30, what="sends under way")
            kill_group(worker.pid)
            worker.wait()
        with celery_worker(app=app, concurrency=2, **env):  # what a supervisor restarts
            # Longer than the visibility timeout plus kombu's restore: after it, nothing comes back.
            sent = Notification.objects.filter(delivery__reference__startswith=tag, status="sent")
            wait_stable(sent.count, quiet=VISIBILITY_TIMEOUT + 6, timeout=90)
    counted = provider_calls(calls)
    total = TASKS * PER_TASK
    assert Notification.objects.filter(delivery__reference__startswith=tag).count() == total
    return total - len(counted), sum(1 for n in counted.values() if n > 1)


def test_a_worker_killed_mid_send_loses_messages_with_celerys_defaults_and_none_with_ours(tmp_path):
    defaults = "tests.chaos.default_celery"
    lost_default, twice_default = kill_the_worker_mid_send(tmp_path, app=defaults, tag="DEF")
    lost_ours, twice_ours = kill_the_worker_mid_send(tmp_path, app="config", tag="OURS")
    print(
        f"\nO3 control: Celery defaults lost {lost_default}/{TASKS * PER_TASK} messages "
        f"(sent twice {twice_default}); our settings lost {lost_ours} (sent twice {twice_ours})"
    )
    assert lost_default > 0  # the control reproduces the loss: the test can see one
    assert lost_ours == 0
    assert twice_ours <= 2  # at most the message each of the two pool children was sending
