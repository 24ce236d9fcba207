"""The outbox with the real pieces: Redis as the broker, a Celery worker subprocess on the test
database, and the fake routing backend on loopback. Nothing is lost while the backend fails."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from tests.services import celery_worker, fast_beat, wait_for
from tests.tracking.outbound_support import (
    OUTBOUND_SECRET,
    SLOT_DATA,
    closed_port,
    fake_routing_backend,
    make_delivery,
)
from tracking.models import OutboundEvent, OutboundStatus
from tracking.outbound import outbound_enqueue
from tracking.tasks import outbound_sweep

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

QUEUE = "celery"


class Boom(Exception):
    pass


def worker_env(url: str) -> dict[str, str]:
    return {
        "PORCHLIGHT_ROUTING_URL": url,
        "PORCHLIGHT_OUTBOUND_SECRET": OUTBOUND_SECRET,
        "PORCHLIGHT_OUTBOUND_TIMEOUT": "2",
    }


def statuses() -> Counter[str]:
    return Counter(OutboundEvent.objects.values_list("status", flat=True))


def test_a_rollback_publishes_no_task_and_a_commit_publishes_one() -> None:
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    before = broker.llen(QUEUE)
    delivery = make_delivery()
    with pytest.raises(Boom), transaction.atomic():
        outbound_enqueue(delivery=delivery, type="delivery.slot_booked", data=SLOT_DATA)
        raise Boom
    assert broker.llen(QUEUE) == before
    assert OutboundEvent.objects.count() == 0

    with transaction.atomic():
        row = outbound_enqueue(delivery=delivery, type="delivery.slot_booked", data=SLOT_DATA)
        assert broker.llen(QUEUE) == before  # not before the commit
    assert broker.llen(QUEUE) == before + 1
    message = json.loads(broker.lpop(QUEUE))  # type: ignore[arg-type]
    assert message["headers"]["task"] == "tracking.tasks.outbound_send"
    assert message["headers"]["argsrepr"] == f"({row.pk},)"


@pytest.mark.slow
def test_twenty_events_queued_while_the_backend_answers_503_all_arrive_once_it_recovers() -> None:
    with (
        fake_routing_backend() as backend,
        celery_worker(**worker_env(backend.url)),
        fast_beat(outbound_sweep),
    ):
        backend.status = 503
        delivery = make_delivery()
        rows = [
            outbound_enqueue(
                delivery=delivery, type="delivery.feedback", data={"rating": n % 5 + 1, "comment": None}
            )
            for n in range(20)
        ]
        wait_for(
            lambda: OutboundEvent.objects.filter(attempts__gte=1, status=OutboundStatus.QUEUED).count() == 20,
            timeout=30,
            what="every row to have failed once against the 503",
        )
        assert backend.delivered_ids() == []
        failures = backend.count()

        backend.status = 200
        recovered = time.monotonic()
        wait_for(lambda: statuses() == {OutboundStatus.SENT: 20}, timeout=90, what="all 20 rows sent")
        drained = time.monotonic() - recovered

    ids = {row.event_id for row in rows}
    delivered = Counter(backend.delivered_ids())
    assert set(delivered) == ids  # every id arrived, at least once
    assert all(count >= 1 for count in delivered.values())
    assert set(backend.ids()) == ids  # nothing else was sent
    for request in backend.received:
        request.verify()
    print(f"\n503 phase: {failures} POSTs; after recovery all 20 sent in {drained:.1f} s; "
          f"repeats: {sum(delivered.values()) - 20}")  # fmt: skip


@pytest.mark.slow
def test_events_queued_while_the_backend_is_down_are_sent_when_it_comes_up() -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}/routing/events"
    with celery_worker(**worker_env(url)), fast_beat(outbound_sweep):
        delivery = make_delivery()
        rows = [
            outbound_enqueue(delivery=delivery, type="delivery.slot_booked", data=SLOT_DATA) for _ in range(5)
        ]
        wait_for(
            lambda: (
                OutboundEvent.objects.filter(attempts__gte=1, last_error__contains="ConnectionError").count()
                == 5
            ),
            timeout=30,
            what="every row to have met a refused connection",
        )
        assert statuses() == {OutboundStatus.QUEUED: 5}
        with fake_routing_backend(port) as backend:
            wait_for(lambda: statuses() == {OutboundStatus.SENT: 5}, timeout=90, what="all 5 rows sent")
    assert set(backend.delivered_ids()) == {row.event_id for row in rows}


def test_events_queued_while_no_worker_runs_are_sent_when_one_starts() -> None:
    with fake_routing_backend() as backend:
        delivery = make_delivery()
        rows = [
            outbound_enqueue(
                delivery=delivery, type="delivery.feedback", data={"rating": 2, "comment": "late"}
            )
            for _ in range(5)
        ]
        assert statuses() == {OutboundStatus.QUEUED: 5}
        with celery_worker(**worker_env(backend.url)):
            wait_for(lambda: statuses() == {OutboundStatus.SENT: 5}, timeout=30, what="all 5 rows sent")
    assert sorted(backend.delivered_ids()) == sorted(row.event_id for row in rows)


def test_the_sweeper_on_a_real_worker_resends_a_row_whose_sender_died() -> None:
    with fake_routing_backend() as backend, celery_worker(**worker_env(backend.url)):
        row = OutboundEvent.objects.create(
            event_id="pl_died_mid_send",
            type="delivery.feedback",
            delivery=make_delivery(),
            data={"reference": "x", "rating": 3, "comment": None},
            occurred_at=timezone.now(),
            next_attempt_at=timezone.now() - timedelta(minutes=2),
            status=OutboundStatus.SENDING,
            attempts=1,
            lease_until=timezone.now() - timedelta(seconds=1),
        )
        outbound_sweep.delay()
        wait_for(lambda: backend.delivered_ids() == [row.event_id], timeout=30, what="the resend")
        wait_for(
            lambda: OutboundEvent.objects.filter(pk=row.pk, status=OutboundStatus.SENT, attempts=2).exists(),
            timeout=10,
            what="the row marked sent",
        )
