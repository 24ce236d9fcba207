"""O3: the whole worker killed with SIGKILL three times while sends are in flight. Nothing is
lost; a message is sent again only where the kill fell between the provider's accept and our
record of it (ambiguous), and then once more at most. Bounded (about a minute), marked slow."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from django.db import transaction

from notifications import rules, services
from notifications.models import Notification
from notifications.tasks import notifications_sweep
from tests.notifications.conftest import make_delivery
from tests.processes import kill_group
from tests.services import celery_worker, fast_beat, wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

MESSAGES = 100


def calls(folder: Path) -> Counter[int]:
    return Counter(int(path.name.split("-", 1)[0]) for path in folder.iterdir())


def test_killing_the_worker_mid_send_loses_nothing_and_repeats_only_ambiguous_sends(tmp_path):
    env = {
        "SMS_BACKEND": "tests.notifications.slow_provider.SMSBackend",
        "SLOW_PROVIDER_PATH": str(tmp_path),
        "SLOW_PROVIDER_SECONDS": "0.1",
        "NOTIFY_QUIET_HOURS": "",
        "NOTIFY_LEASE_SECONDS": "3",
        "CELERY_VISIBILITY_TIMEOUT": "15",
    }
    deliveries = [make_delivery(email="") for _ in range(MESSAGES)]
    with transaction.atomic():  # as one intake batch: tasks of 20 messages each
        services.notifications_queue(
            firings=[(d, rules.Firing("booked", f"{d.pk}:booked")) for d in deliveries]
        )
    in_flight_at_kills = set()
    with fast_beat(notifications_sweep, every=1.0):
        for _ in range(3):
            with celery_worker(**env) as worker:
                before = sum(calls(tmp_path).values())
                wait_for(
                    lambda b=before: sum(calls(tmp_path).values()) >= b + 10,
                    timeout=30,
                    what="sends in flight",
                )
                kill_group(worker.pid)
                worker.wait()
                print(
                    "after kill",
                    Counter(Notification.objects.values_list("status", flat=True)),
                    sum(calls(tmp_path).values()),
                )
                # What the dead worker held: claimed, maybe sent, never recorded.
                in_flight_at_kills |= set(
                    Notification.objects.filter(status="sending").values_list("pk", flat=True)
                )
        started = time.monotonic()
        with celery_worker(**env):
            wait_for(
                lambda: not Notification.objects.exclude(status="sent").exists(),
                timeout=60,
                what="every message sent",
            )
    counted = calls(tmp_path)
    assert len(counted) == MESSAGES  # 100/100 reached the provider
    repeated = {pk: n for pk, n in counted.items() if n > 1}
    # Only messages a kill caught between claim and record are sent again, and once more at most.
    assert set(repeated) <= in_flight_at_kills
    assert all(n <= 2 for n in repeated.values())
    assert not Notification.objects.filter(status="sending").exists()
    recovery = time.monotonic() - started
    assert recovery < 15 + 10  # the visibility timeout (15 s here) + 10 s; the lease (3 s) is shorter
    print(
        f"kills: 3, claimed and in flight at the kills: {len(in_flight_at_kills)}, "
        f"sent twice (ambiguous): {len(repeated)}, all sent {recovery:.1f} s after the last restart"
    )
