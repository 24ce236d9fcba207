from __future__ import annotations

from datetime import date, time, timedelta
from unittest import mock

import pytest
from django.db import OperationalError
from django.utils import timezone

from scheduling import services
from scheduling.models import BlackoutDate, Booking, BookingChange, Slot, SlotTemplate
from scheduling.services import (
    BookingRefused,
    booking_book,
    booking_cancel,
    slot_set_capacity,
    slots_generate,
)
from tests.scheduling.factories import make_delivery, make_slot, make_zone
from tracking.models import OutboundEvent

pytestmark = pytest.mark.django_db


def refused(code: str, **kwargs):
    with pytest.raises(BookingRefused) as info:
        booking_book(**kwargs)
    assert info.value.code == code, info.value.message
    return info.value


def test_a_booking_takes_a_place_and_becomes_the_delivery_window():
    slot = make_slot(capacity=2)
    delivery = make_delivery(zone=slot.zone)
    result = booking_book(delivery=delivery, slot_id=str(slot.pk))
    slot.refresh_from_db()
    delivery.refresh_from_db()
    assert result.changed and result.previous is None
    assert slot.booked == 1
    assert (delivery.window_start, delivery.window_end) == (slot.start, slot.end)
    assert Booking.objects.get(delivery=delivery).slot == slot


def test_a_booking_writes_the_contract_event_to_the_outbox_in_local_time():
    slot = make_slot()
    delivery = make_delivery(zone=slot.zone)
    booking_book(delivery=delivery, slot_id=slot.pk)
    event = OutboundEvent.objects.get(delivery=delivery)
    local = timezone.localtime(slot.start, slot.zone.tzinfo)
    assert event.type == "delivery.slot_booked"
    assert event.data == {
        "reference": delivery.reference,
        "slot": {
            "start": local.isoformat(),
            "end": (local + timedelta(hours=2)).isoformat(),
            "zone": slot.zone.code,
        },
        "previous": None,
        "by": "customer",
    }
    assert local.isoformat()[-6:] in ("-06:00", "-05:00")


def test_a_move_releases_the_old_place_and_says_where_it_came_from():
    old = make_slot()
    new = make_slot(zone=old.zone, hours_ahead=72)
    delivery = make_delivery(zone=old.zone)
    booking_book(delivery=delivery, slot_id=old.pk)
    result = booking_book(delivery=delivery, slot_id=new.pk, by="staff")
    old.refresh_from_db()
    new.refresh_from_db()
    assert (old.booked, new.booked) == (0, 1)
    assert result.previous == old
    data = OutboundEvent.objects.filter(delivery=delivery).latest("pk").data
    assert data["previous"] == {"start": old.as_event()["start"], "end": old.as_event()["end"]}
    assert data["by"] == "staff"
    history = list(
        BookingChange.objects.filter(booking__delivery=delivery).values_list(
            "action", "from_slot", "to_slot", "by"
        )
    )
    assert history == [("booked", None, old.pk, "customer"), ("moved", old.pk, new.pk, "staff")]


def test_booking_the_slot_already_booked_changes_nothing():
    slot = make_slot()
    delivery = make_delivery(zone=slot.zone)
    booking_book(delivery=delivery, slot_id=slot.pk)
    again = booking_book(delivery=delivery, slot_id=slot.pk)
    slot.refresh_from_db()
    assert not again.changed
    assert slot.booked == 1
    assert OutboundEvent.objects.filter(delivery=delivery).count() == 1
    assert Booking.objects.get(delivery=delivery).changes == 0


def test_a_full_slot_is_refused_and_nothing_is_written():
    slot = make_slot(capacity=1)
    booking_book(delivery=make_delivery(zone=slot.zone), slot_id=slot.pk)
    late = make_delivery(zone=slot.zone)
    assert refused("slot_full", delivery=late, slot_id=slot.pk).http_status == 409
    assert not Booking.objects.filter(delivery=late).exists()
    assert not OutboundEvent.objects.filter(delivery=late).exists()


def test_a_failed_move_keeps_the_old_booking():
    old = make_slot(hours_ahead=96)  # a higher id than `full`'s would be released first
    full = make_slot(zone=old.zone, capacity=1)
    booking_book(delivery=make_delivery(zone=old.zone), slot_id=full.pk)
    delivery = make_delivery(zone=old.zone)
    booking_book(delivery=delivery, slot_id=old.pk)
    refused("slot_full", delivery=delivery, slot_id=full.pk)
    old.refresh_from_db()
    assert old.booked == 1
    assert Booking.objects.get(delivery=delivery).slot == old


def test_booking_closes_at_the_cutoff_for_customers_but_not_for_staff(settings):
    settings.PORCHLIGHT_BOOKING_CUTOFF_HOURS = 12
    soon = make_slot(hours_ahead=11)
    delivery = make_delivery(zone=soon.zone)
    refused("cutoff", delivery=delivery, slot_id=soon.pk)
    assert booking_book(delivery=delivery, slot_id=soon.pk, by="staff").changed


def test_the_cutoff_is_configurable(settings):
    settings.PORCHLIGHT_BOOKING_CUTOFF_HOURS = 2
    slot = make_slot(hours_ahead=3)
    assert booking_book(delivery=make_delivery(zone=slot.zone), slot_id=slot.pk).changed


def test_a_past_slot_is_refused_even_for_staff():
    past = make_slot(hours_ahead=-1)
    refused("past", delivery=make_delivery(zone=past.zone), slot_id=past.pk, by="staff")


def test_a_slot_of_another_zone_reads_like_an_unknown_one():
    slot = make_slot()
    delivery = make_delivery(zone=make_zone())
    error = refused("invalid_slot", delivery=delivery, slot_id=slot.pk)
    assert error.http_status == 400
    slot.refresh_from_db()
    assert slot.booked == 0


@pytest.mark.parametrize(
    "bad", [None, "", "abc", "-1", "0", "1.5", "99999999999999999999999", " ", "١٢", True, 2**70, [1]]
)
def test_malformed_slot_ids_are_refused_as_invalid(bad):
    delivery = make_delivery(zone=make_zone())
    refused("invalid_slot", delivery=delivery, slot_id=bad)


def test_at_most_the_configured_number_of_changes(settings):
    settings.PORCHLIGHT_BOOKING_MAX_CHANGES = 3
    zone = make_zone()
    slots = [make_slot(zone=zone, hours_ahead=24 + 3 * i) for i in range(5)]
    delivery = make_delivery(zone=zone)
    for slot in slots[:4]:  # a first booking and three changes
        booking_book(delivery=delivery, slot_id=slot.pk)
    refused("too_many_changes", delivery=delivery, slot_id=slots[4].pk)
    refused("too_many_changes", delivery=delivery, slot_id=slots[4].pk, by="staff")
    assert Booking.objects.get(delivery=delivery).slot == slots[3]


@pytest.mark.parametrize("status", ["out_for_delivery", "arriving", "delivered", "cancelled", "returned"])
def test_no_booking_once_the_delivery_is_on_its_way_or_finished(status):
    slot = make_slot()
    delivery = make_delivery(zone=slot.zone, status=status, status_at=timezone.now())
    refused("closed", delivery=delivery, slot_id=slot.pk, by="staff")


def test_after_a_failed_attempt_the_customer_can_book_again():
    slot = make_slot()
    delivery = make_delivery(zone=slot.zone, status="attempt_failed")
    assert booking_book(delivery=delivery, slot_id=slot.pk).changed


def test_a_blacked_out_day_cannot_be_booked():
    slot = make_slot()
    BlackoutDate.objects.create(zone=slot.zone, date=slot.local_date)
    refused("closed", delivery=make_delivery(zone=slot.zone), slot_id=slot.pk)


def test_refusals_are_translated_into_spanish():
    from django.utils import translation

    slot = make_slot(capacity=0)
    with translation.override("es"):
        error = refused("slot_full", delivery=make_delivery(zone=slot.zone), slot_id=slot.pk)
        assert "lleno" in str(error.message)


def test_the_confirmation_hook_runs_in_the_transaction_and_the_live_push_after_commit(
    django_capture_on_commit_callbacks,
):
    old = make_slot()
    new = make_slot(zone=old.zone, hours_ahead=60)
    delivery = make_delivery(zone=old.zone)
    with mock.patch.object(services, "notifications_for_booking") as notify, \
            mock.patch.object(services.live, "publish_delivery") as publish:  # fmt: skip
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            booking_book(delivery=delivery, slot_id=old.pk)
        assert notify.call_args.kwargs["moved"] is False
        publish.assert_not_called()
        for callback in callbacks:
            callback()
        assert publish.call_args.kwargs["delivery"].window_start == old.start
        booking_book(delivery=delivery, slot_id=new.pk)
        assert notify.call_args.kwargs["moved"] is True


def test_a_deadlock_is_retried_from_the_start():
    slot = make_slot()
    delivery = make_delivery(zone=slot.zone)
    real = services._book_once
    calls = []

    class Deadlock(Exception):
        sqlstate = "40P01"

    def flaky(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("deadlock detected") from Deadlock()
        return real(**kwargs)

    with mock.patch.object(services, "_book_once", flaky):
        assert booking_book(delivery=delivery, slot_id=slot.pk).changed
    assert len(calls) == 2


def test_cancelling_gives_the_place_back_and_a_new_booking_counts_as_a_change():
    slot = make_slot(capacity=1)
    delivery = make_delivery(zone=slot.zone)
    booking_book(delivery=delivery, slot_id=slot.pk)
    assert booking_cancel(delivery=delivery)
    assert not booking_cancel(delivery=delivery)
    slot.refresh_from_db()
    assert slot.booked == 0
    booking_book(delivery=delivery, slot_id=slot.pk)
    assert Booking.objects.get(delivery=delivery).changes == 1


def test_capacity_cannot_drop_below_the_places_booked():
    slot = make_slot(capacity=3)
    for _ in range(2):
        booking_book(delivery=make_delivery(zone=slot.zone), slot_id=slot.pk)
    assert not slot_set_capacity(slot_id=slot.pk, capacity=1)
    assert slot_set_capacity(slot_id=slot.pk, capacity=2)
    slot.refresh_from_db()
    assert (slot.capacity, slot.booked) == (2, 2)


def test_slots_are_generated_from_templates_once_and_skip_blackouts():
    zone = make_zone()
    monday = date(2030, 3, 4)
    SlotTemplate.objects.create(zone=zone, weekday=0, start_time=time(8), end_time=time(10), capacity=5)
    SlotTemplate.objects.create(zone=zone, weekday=1, start_time=time(8), end_time=time(10), capacity=5)
    SlotTemplate.objects.create(
        zone=zone, weekday=2, start_time=time(8), end_time=time(10), capacity=5, active=False
    )
    BlackoutDate.objects.create(zone=zone, date=monday + timedelta(days=1))
    assert slots_generate(days_ahead=14, today=monday, zones=[zone]) == 3  # two Mondays, one Tuesday
    assert slots_generate(days_ahead=14, today=monday, zones=[zone]) == 0
    assert [s.local_start.strftime("%a %H:%M") for s in Slot.objects.filter(zone=zone)] == [
        "Mon 08:00",
        "Mon 08:00",
        "Tue 08:00",
    ]


def test_generated_slots_keep_their_wall_clock_time_across_dst():
    zone = make_zone(tz="America/Chicago")
    SlotTemplate.objects.create(zone=zone, weekday=6, start_time=time(9), end_time=time(11), capacity=5)
    # Sunday 2030-03-10 is the day US clocks go forward.
    slots_generate(days_ahead=15, today=date(2030, 3, 3), zones=[zone])
    slots = list(Slot.objects.filter(zone=zone))
    assert [s.local_start.hour for s in slots] == [9, 9, 9]
    assert [s.start.utcoffset() for s in slots] == [timedelta(0)] * 3
    assert sorted({s.start.hour for s in slots}) == [14, 15]  # UTC-6 before, UTC-5 after


@pytest.mark.parametrize("status", ["cancelled", "returned"])
def test_a_delivery_the_routing_backend_ends_gives_its_place_back(post_events, status):
    slot = make_slot(capacity=1)
    delivery = make_delivery(zone=slot.zone)
    booking_book(delivery=delivery, slot_id=str(slot.pk))
    response = post_events(
        {
            "id": f"end-{status}",
            "type": "delivery.status",
            "occurred_at": timezone.now().isoformat(),
            "data": {"reference": delivery.reference, "status": status},
        }
    )
    assert response.json()["results"][0]["result"] == "accepted"
    slot.refresh_from_db()
    assert slot.booked == 0
    change = BookingChange.objects.filter(booking__delivery=delivery).latest("pk")
    assert (change.action, change.by) == ("cancelled", "routing")


def test_a_delivery_still_on_its_way_keeps_its_place(post_events):
    slot = make_slot(capacity=1)
    delivery = make_delivery(zone=slot.zone)
    booking_book(delivery=delivery, slot_id=str(slot.pk))
    post_events(
        {
            "id": "still-going",
            "type": "delivery.status",
            "occurred_at": timezone.now().isoformat(),
            "data": {"reference": delivery.reference, "status": "attempt_failed"},
        }
    )
    slot.refresh_from_db()
    assert slot.booked == 1


def test_booking_then_moving_writes_one_confirmation_each_for_the_customer():
    from notifications.models import Notification

    first = make_slot(capacity=1)
    second = make_slot(capacity=1, zone=first.zone, start=first.start + timedelta(hours=2))
    delivery = make_delivery(zone=first.zone)
    booking_book(delivery=delivery, slot_id=str(first.pk))
    booking_book(delivery=delivery, slot_id=str(first.pk))  # a double submit: no second message
    booking_book(delivery=delivery, slot_id=str(second.pk))
    kinds = list(Notification.objects.filter(delivery=delivery).order_by("pk").values_list("kind", flat=True))
    assert kinds == ["booked", "moved"]
