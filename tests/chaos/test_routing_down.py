"""Issue #7's "the routing backend down for a while": outbound events are delivered after it
returns. tests/tracking/test_outbound_worker.py already shows it on a real worker (20 events
through a 503 phase, 5 through refused connections); this adds the control: the same events
POSTed by a plain Celery task with Celery's default retry policy (3 retries) are lost for good
once the outage outlasts the retries, while the outbox delivers every one.

Scaled for CI: 10 events, an outage of about 6 s (longer than the raw task's retries).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.chaos.raw_celery import raw_outbound_post
from tests.chaos.servers import wait_stable
from tests.services import celery_worker, fast_beat, wait_for
from tests.tracking.outbound_support import OUTBOUND_SECRET, fake_routing_backend, make_delivery
from tracking.models import OutboundEvent, OutboundStatus
from tracking.outbound import outbound_enqueue
from tracking.tasks import outbound_sweep

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.chaos,
    pytest.mark.django_db(transaction=True),
]

EVENTS = 10


def test_events_sent_while_the_routing_backend_is_down_arrive_through_the_outbox_and_not_by_raw_celery():
    with fake_routing_backend() as backend:
        backend.status = 503
        env = {
            "PORCHLIGHT_ROUTING_URL": backend.url,
            "PORCHLIGHT_OUTBOUND_SECRET": OUTBOUND_SECRET,
            "PORCHLIGHT_OUTBOUND_TIMEOUT": "2",
        }
        with celery_worker(app="tests.chaos.raw_celery", **env), fast_beat(outbound_sweep):
            delivery = make_delivery()
            rows = [
                outbound_enqueue(
                    delivery=delivery, type="delivery.feedback", data={"rating": 4, "comment": None}
                )
                for _ in range(EVENTS)
            ]
            raw_url = backend.url + "?raw=1"
            raw_ids = [f"raw_{n}" for n in range(EVENTS)]
            for event_id in raw_ids:
                raw_outbound_post.delay(raw_url, json.dumps({"events": [{"id": event_id}]}))
            started = time.monotonic()

            def raw_tries() -> int:
                return sum(1 for r in backend.received if "raw=1" in r.path)

            # The raw tasks give up after 1 + 3 tries each; the outbox keeps its rows.
            wait_for(lambda: raw_tries() == 4 * EVENTS, timeout=30, what="the raw tasks to give up")
            wait_for(
                lambda: OutboundEvent.objects.filter(attempts__gte=2).count() == EVENTS,
                timeout=30,
                what="every outbox row tried twice",
            )
            backend.status = 200
            outage = time.monotonic() - started
            wait_for(
                lambda: set(OutboundEvent.objects.values_list("status", flat=True)) == {OutboundStatus.SENT},
                timeout=90,
                what="every outbox row sent",
            )
            recovered = time.monotonic() - started - outage
            assert wait_stable(raw_tries, quiet=3, timeout=30) == 4 * EVENTS  # no raw task came back
    delivered = backend.delivered_ids()
    assert set(delivered) == {row.event_id for row in rows}  # the outbox: 10/10
    assert not set(delivered) & set(raw_ids)  # the control: 0/10
    print(
        f"\nrouting down {outage:.1f} s: the outbox delivered {EVENTS}/{EVENTS} ({recovered:.1f} s after "
        f"it came back, {len(delivered) - EVENTS} repeats); raw Celery tasks delivered 0/{EVENTS}"
    )
