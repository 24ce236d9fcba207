"""B2 of RELIABILITY.md: a stateful property test of book / move / cancel / concurrent move /
capacity decrease on PostgreSQL, checking after every step that no slot is over capacity,
that each delivery holds at most one place, and that every counter equals its rows.

Bounded for CI (B2_EXAMPLES, default 40 examples x 30 steps); B2_EXAMPLES=200 B2_STEPS=50 runs the plan.
"""

from __future__ import annotations

import itertools
import os
import threading

import pytest
from django.conf import settings
from django.db import connection, connections
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from scheduling.models import Booking, Slot
from scheduling.services import BookingRefused, booking_book, booking_cancel, slot_set_capacity
from tests.scheduling.factories import make_delivery, make_slot, make_zone

SLOTS = 4
DELIVERIES = 6
EXAMPLES = int(os.environ.get("B2_EXAMPLES", "40"))
STEPS = int(os.environ.get("B2_STEPS", "30"))
_zones = itertools.count()


class BookingMachine(RuleBasedStateMachine):
    """The model: which slot each delivery holds, how often it changed, each slot's capacity."""

    def __init__(self) -> None:
        super().__init__()
        zone = make_zone(code=f"b2-{os.getpid()}-{next(_zones)}")
        self.slots = [make_slot(zone=zone, capacity=2, hours_ahead=30 + 3 * i) for i in range(SLOTS)]
        self.deliveries = [make_delivery(zone=zone) for _ in range(DELIVERIES)]
        self.held: dict[int, int | None] = {d.pk: None for d in self.deliveries}
        self.changes: dict[int, int] = {d.pk: 0 for d in self.deliveries}
        self.ever_booked: set[int] = set()
        self.capacity: dict[int, int] = {s.pk: 2 for s in self.slots}

    def count(self, slot_pk: int) -> int:
        return sum(1 for held in self.held.values() if held == slot_pk)

    def expected(self, delivery_pk: int, slot_pk: int) -> str:
        if self.held[delivery_pk] == slot_pk:
            return "unchanged"
        if (
            delivery_pk in self.ever_booked
            and self.changes[delivery_pk] >= settings.PORCHLIGHT_BOOKING_MAX_CHANGES
        ):
            return "too_many_changes"
        if self.count(slot_pk) >= self.capacity[slot_pk]:
            return "slot_full"
        return "booked"

    def apply(self, delivery_pk: int, slot_pk: int) -> None:
        if delivery_pk in self.ever_booked:
            self.changes[delivery_pk] += 1
        self.ever_booked.add(delivery_pk)
        self.held[delivery_pk] = slot_pk

    @rule(d=st.integers(0, DELIVERIES - 1), s=st.integers(0, SLOTS - 1))
    def book_or_move(self, d: int, s: int) -> None:
        delivery, slot = self.deliveries[d], self.slots[s]
        expected = self.expected(delivery.pk, slot.pk)
        try:
            result = booking_book(delivery=delivery, slot_id=slot.pk, by="staff" if d % 2 else "customer")
            outcome = "booked" if result.changed else "unchanged"
        except BookingRefused as refusal:
            outcome = refusal.code
        assert outcome == expected
        if outcome == "booked":
            self.apply(delivery.pk, slot.pk)

    @rule(d=st.integers(0, DELIVERIES - 1))
    def cancel(self, d: int) -> None:
        delivery = self.deliveries[d]
        assert booking_cancel(delivery=delivery) == (self.held[delivery.pk] is not None)
        self.held[delivery.pk] = None

    @rule(d=st.integers(0, DELIVERIES - 1), s1=st.integers(0, SLOTS - 1), s2=st.integers(0, SLOTS - 1))
    def concurrent_moves_of_one_booking(self, d: int, s1: int, s2: int) -> None:
        """Two requests move the same delivery at once (two tabs, a double tap)."""
        delivery = self.deliveries[d]
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def move(slot: Slot) -> None:
            try:
                barrier.wait()
                booking_book(delivery=delivery, slot_id=slot.pk)
            except BookingRefused:
                pass
            except BaseException as error:
                errors.append(error)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=move, args=(self.slots[i],)) for i in (s1, s2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        # Either order is correct; the model follows what the database decided, and the
        # invariants below check that it is consistent.
        booking = Booking.objects.filter(delivery=delivery).first()
        held = booking.slot_id if booking else None
        assert held in {self.held[delivery.pk], self.slots[s1].pk, self.slots[s2].pk}
        self.held[delivery.pk] = held
        if booking is not None:
            self.ever_booked.add(delivery.pk)
            self.changes[delivery.pk] = booking.changes

    @rule(s=st.integers(0, SLOTS - 1), capacity=st.integers(0, 3))
    def change_capacity(self, s: int, capacity: int) -> None:
        slot = self.slots[s]
        allowed = capacity >= self.count(slot.pk)
        assert slot_set_capacity(slot_id=slot.pk, capacity=capacity) == allowed
        if allowed:
            self.capacity[slot.pk] = capacity

    @invariant()
    def counters_equal_rows_and_stay_within_capacity(self) -> None:
        for slot in Slot.objects.filter(pk__in=[s.pk for s in self.slots]):
            rows = Booking.objects.filter(slot=slot).count()
            assert slot.booked == rows == self.count(slot.pk)
            assert slot.booked <= slot.capacity == self.capacity[slot.pk]

    @invariant()
    def each_delivery_holds_what_the_model_says(self) -> None:
        held = dict(
            Booking.objects.filter(delivery__in=self.deliveries).values_list("delivery_id", "slot_id")
        )
        assert {pk: held.get(pk) for pk in self.held} == self.held


@pytest.mark.django_db(transaction=True)
def test_booking_state_machine_model():
    if connection.vendor != "postgresql":
        pytest.skip(
            "needs PostgreSQL: SQLite serialises writers (48-49/50 'database is locked' measured), "
            "so concurrent moves would test its file lock, not our locking"
        )
    run_state_machine_as_test(
        BookingMachine,
        settings=hsettings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
