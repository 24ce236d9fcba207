"""Two agents act on the same delivery at the same instant (PostgreSQL, real row locks): one
wins, the other is told the page is stale; nothing is done twice and nothing fails."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections

from scheduling.models import Booking, BookingChange
from scheduling.services import booking_book
from tests.scheduling.factories import make_slot, make_zone
from tests.tracking.support_factories import make_delivery, support_user
from tracking.models import Delivery, SupportAction
from tracking.support import SupportStale, support_nonce, support_slot_book, tracking_token_reissue

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
AGENTS = 8


@pytest.fixture(autouse=True)
def _postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks under concurrency: PostgreSQL only (SQLite serialises writers)")


def race(attempts: list[Callable[[], object]]) -> Counter[str]:
    barrier = threading.Barrier(len(attempts))

    def run(attempt: Callable[[], object]) -> str:
        try:
            barrier.wait()
            attempt()
            return "done"
        except SupportStale:
            return "stale"
        except Exception as error:  # a 5xx in the admin
            return f"error: {type(error).__name__}: {error}"
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=len(attempts)) as pool:
        return Counter(pool.map(run, attempts))


def test_agents_moving_the_same_slot_at_once_one_wins_the_others_are_told_it_changed() -> None:
    zone = make_zone(code="laredo-race")
    first = make_slot(zone=zone, hours_ahead=20)
    targets = [make_slot(zone=zone, hours_ahead=24 + 2 * n) for n in range(AGENTS)]
    delivery = make_delivery(zone_code=zone.code)
    booking_book(delivery=delivery, slot_id=first.pk)
    agents = [support_user(f"agent-{n}") for n in range(AGENTS)]
    outcome = race(
        [
            lambda user=user, slot=slot: support_slot_book(
                delivery_id=delivery.pk, user=user, slot_id=slot.pk, expected_slot_id=str(first.pk)
            )
            for user, slot in zip(agents, targets, strict=True)
        ]
    )
    assert outcome == Counter({"done": 1, "stale": AGENTS - 1}), outcome
    booking = Booking.objects.get(delivery=delivery)
    assert booking.slot in targets and booking.changes == 1
    assert BookingChange.objects.filter(booking=booking).count() == 2  # the first booking, one move
    assert sum(slot.booked for slot in type(first).objects.filter(zone=zone)) == 1


def test_agents_reissuing_the_same_link_at_once_reissue_it_once() -> None:
    delivery = make_delivery()
    seen = delivery.tracking_token
    agents = [support_user(f"agent-{n}") for n in range(AGENTS)]
    outcome = race(
        [
            lambda user=user: tracking_token_reissue(
                delivery_id=delivery.pk, user=user, expected_token=seen, nonce=support_nonce()
            )
            for user in agents
        ]
    )
    assert outcome == Counter({"done": 1, "stale": AGENTS - 1}), outcome
    assert Delivery.objects.get(pk=delivery.pk).tracking_token != seen
    assert SupportAction.objects.filter(kind="token_reissued").count() == 1


def test_a_double_submitted_note_is_recorded_once_even_at_the_same_instant() -> None:
    delivery = make_delivery()
    user = support_user("double")
    nonce = support_nonce()
    from tracking.support import support_note_add

    outcome = race(
        [
            lambda: support_note_add(delivery_id=delivery.pk, user=user, text="same note", nonce=nonce)
            for _ in range(AGENTS)
        ]
    )
    assert outcome == Counter({"done": AGENTS})
    assert SupportAction.objects.filter(kind="note").count() == 1
