"""Booking, moving and cancelling slots, and generating slots from the weekly templates.

A booking or a move is one transaction that never overbooks, whatever the concurrency:
- the delivery's row is locked first, so two requests for the same delivery run one after
  the other (a double submit becomes a no-op, two concurrent moves cannot both release the
  same old place);
- a place is taken with `UPDATE slot SET booked = booked + 1 WHERE id = %s AND booked <
  capacity`: the database decides, under the row's lock, and a slot that filled up meanwhile
  updates 0 rows (the naive read-then-write books 200 places of 10, see PERFORMANCE.md);
- the old place of a move is released in the same transaction, and slot rows are always
  updated in ascending id order so that two crossing moves (A->B, B->A) cannot deadlock;
- deadlocks and serialization failures (40P01, 40001) are retried from the start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from django.conf import settings
from django.db import OperationalError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from notifications.services import notifications_for_booking
from scheduling.models import (
    BlackoutDate,
    BookedBy,
    Booking,
    BookingAction,
    BookingChange,
    Slot,
    SlotTemplate,
    Zone,
)
from tracking import live
from tracking.models import Delivery, Status
from tracking.outbound import outbound_enqueue

if TYPE_CHECKING:
    from tracking.services import Change

logger = logging.getLogger(__name__)

BOOKABLE_STATUSES = frozenset({Status.CREATED, Status.SCHEDULED, Status.ATTEMPT_FAILED})
RETRIES = 5
T = TypeVar("T")


class BookingRefused(Exception):
    """A rule said no. `code` is stable (tests, the benchmark); `message` is for people."""

    # code -> HTTP status the customer page answers with
    STATUS = {
        "invalid_slot": 400,
        "slot_full": 409,
        "past": 409,
        "cutoff": 409,
        "closed": 409,
        "too_many_changes": 409,
    }

    def __init__(self, code: str, message: str | Promise) -> None:
        super().__init__(code)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return self.STATUS.get(self.code, 409)


@dataclass(frozen=True)
class BookingResult:
    booking: Booking
    slot: Slot
    previous: Slot | None
    changed: bool  # False for a double submit of the slot already booked


def _invalid() -> BookingRefused:
    # Unknown ids, slots of another zone and malformed input all read the same, so a customer
    # learns nothing about other zones' slots.
    return BookingRefused("invalid_slot", _("Please choose one of the delivery times listed."))


def booking_closed_reason(*, delivery: Delivery) -> str | Promise | None:
    """Why this delivery can no longer be (re)booked, or None if it can."""
    if delivery.status in BOOKABLE_STATUSES:
        return None
    if delivery.status in (Status.OUT_FOR_DELIVERY, Status.ARRIVING):
        return _("Your delivery is already on its way, so its time can no longer be changed.")
    if delivery.status == Status.DELIVERED:
        return _("This delivery has been delivered.")
    return _("This delivery was cancelled or returned, so there is nothing to book.")


def booking_cutoff() -> timedelta:
    return timedelta(hours=settings.PORCHLIGHT_BOOKING_CUTOFF_HOURS)


def slot_is_blacked_out(*, slot: Slot) -> bool:
    return BlackoutDate.objects.filter(zone_id=slot.zone_id, date=slot.local_date).exists()


def _with_retries(operation: Callable[[], T]) -> T:
    for attempt in range(RETRIES):
        try:
            return operation()
        except OperationalError as error:
            code = getattr(error.__cause__, "sqlstate", None)
            if attempt == RETRIES - 1 or code not in ("40001", "40P01"):
                raise
            logger.info("booking retried after %s (attempt %s)", code, attempt + 1)
            time.sleep(0.005 * 2**attempt)
    raise AssertionError("unreachable")


def booking_book(
    *, delivery: Delivery, slot_id: object, by: str = BookedBy.CUSTOMER, staff_user: str = ""
) -> BookingResult:
    """Book `slot_id` for the delivery, or move its booking there. Raises BookingRefused.

    Staff (`by="staff"`) follow the same rules except the cutoff.
    """
    slot_pk = _parse_slot_id(slot_id)
    return _with_retries(
        lambda: _book_once(delivery_pk=delivery.pk, slot_pk=slot_pk, by=by, staff_user=staff_user)
    )


def _parse_slot_id(slot_id: object) -> int:
    if isinstance(slot_id, bool):
        raise _invalid()
    if isinstance(slot_id, int):
        value = slot_id
    elif isinstance(slot_id, str) and slot_id.strip().isascii() and slot_id.strip().isdigit():
        value = int(slot_id.strip()) if len(slot_id.strip()) <= 18 else 0
    else:
        raise _invalid()
    if not 0 < value < 2**63:
        raise _invalid()
    return value


def _book_once(*, delivery_pk: int, slot_pk: int, by: str, staff_user: str) -> BookingResult:
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().get(pk=delivery_pk)
        closed = booking_closed_reason(delivery=delivery)
        if closed is not None:
            raise BookingRefused("closed", closed)
        slot = Slot.objects.select_related("zone").filter(pk=slot_pk).first()
        if slot is None or slot.zone.code != delivery.zone_code:
            raise _invalid()
        booking = Booking.objects.filter(delivery=delivery).select_related("slot__zone").first()
        if booking is not None and booking.slot_id == slot.pk:
            return BookingResult(booking=booking, slot=slot, previous=None, changed=False)
        _check_slot_rules(slot=slot, by=by)
        if booking is not None and booking.changes >= settings.PORCHLIGHT_BOOKING_MAX_CHANGES:
            raise BookingRefused(
                "too_many_changes",
                _(
                    "This delivery's time has already been changed %(max)d times. "
                    "Please contact us to change it again."
                )
                % {"max": settings.PORCHLIGHT_BOOKING_MAX_CHANGES},
            )
        previous = booking.slot if booking is not None else None
        _move_place(take=slot.pk, release=previous.pk if previous else None)
        if booking is None:
            booking = Booking.objects.create(delivery=delivery, slot=slot)
        else:
            booking.slot = slot
            booking.changes += 1
            booking.save(update_fields=["slot", "changes", "updated_at"])
        BookingChange.objects.create(
            booking=booking,
            action=BookingAction.MOVED if previous else BookingAction.BOOKED,
            from_slot=previous,
            to_slot=slot,
            by=by,
            staff_user=staff_user,
        )
        delivery.window_start, delivery.window_end = slot.start, slot.end
        delivery.save(update_fields=["window_start", "window_end", "updated_at"])
        outbound_enqueue(
            delivery=delivery,
            type="delivery.slot_booked",
            data={
                "slot": slot.as_event(),
                "previous": {k: v for k, v in previous.as_event().items() if k != "zone"}
                if previous
                else None,
                "by": by,
            },
        )
        notifications_for_booking(delivery=delivery, moved=previous is not None)
        transaction.on_commit(lambda: live.publish_delivery(delivery=delivery))
    slot.refresh_from_db(fields=["booked", "capacity"])
    return BookingResult(booking=booking, slot=slot, previous=previous, changed=True)


def _check_slot_rules(*, slot: Slot, by: str) -> None:
    now = timezone.now()
    if slot.start <= now:
        raise BookingRefused("past", _("This delivery time has already passed. Please choose another one."))
    if by != BookedBy.STAFF and slot.start - now < booking_cutoff():
        raise BookingRefused(
            "cutoff",
            _("Booking for this time closed %(hours)s hours before it starts. Please choose a later time.")
            % {"hours": _hours(settings.PORCHLIGHT_BOOKING_CUTOFF_HOURS)},
        )
    if slot_is_blacked_out(slot=slot):
        raise BookingRefused("closed", _("We do not deliver on this day. Please choose another one."))


def _hours(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _move_place(*, take: int, release: int | None) -> None:
    """Take a place in one slot and give one back in another, in ascending id order."""
    for slot_pk in sorted([take] if release is None else [take, release]):
        if slot_pk == take:
            taken = Slot.objects.filter(pk=take, booked__lt=F("capacity")).update(booked=F("booked") + 1)
            if not taken:
                raise BookingRefused(
                    "slot_full", _("Sorry, this delivery time has just filled up. Please choose another one.")
                )
        else:
            Slot.objects.filter(pk=slot_pk, booked__gt=0).update(booked=F("booked") - 1)


def booking_cancel(*, delivery: Delivery, by: str = BookedBy.STAFF, staff_user: str = "") -> bool:
    """Give a delivery's place back (staff, or a cancelled delivery). False if none was held.

    The routing contract has no event for this, so nothing goes to the outbox.
    """

    def cancel() -> bool:
        with transaction.atomic():
            # The delivery's lock first, as booking_book takes it: one order, no deadlock.
            Delivery.objects.select_for_update().filter(pk=delivery.pk).first()
            booking = Booking.objects.filter(delivery_id=delivery.pk, slot__isnull=False).first()
            if booking is None or booking.slot_id is None:
                return False
            previous_pk = booking.slot_id
            Slot.objects.filter(pk=previous_pk, booked__gt=0).update(booked=F("booked") - 1)
            booking.slot = None
            booking.save(update_fields=["slot", "updated_at"])
            BookingChange.objects.create(
                booking=booking,
                action=BookingAction.CANCELLED,
                from_slot_id=previous_pk,
                by=by,
                staff_user=staff_user,
            )
            return True

    return _with_retries(cancel)


def bookings_for_changes(*, changes: Sequence[Change]) -> None:
    """A delivery the routing backend cancelled or returned gives its slot's place back.

    Called by the intake inside the transaction that applied the status."""
    for change in changes:
        if change.kind == "status" and change.delivery.status in (Status.CANCELLED, Status.RETURNED):
            booking_cancel(delivery=change.delivery, by=BookedBy.ROUTING)


def slot_set_capacity(*, slot_id: int, capacity: int) -> bool:
    """Change a slot's capacity; refused (False) below the places already booked."""
    if capacity < 0:
        return False
    return bool(Slot.objects.filter(pk=slot_id, booked__lte=capacity).update(capacity=capacity))


def slot_create(
    *, zone_code: str, start: datetime, end: datetime, capacity: int, timezone_name: str = "UTC"
) -> tuple[Slot, bool]:
    """One slot by hand (manage.py create_slot); creates the zone if needed."""
    if timezone.is_naive(start) or timezone.is_naive(end):
        raise ValueError("start and end must carry a UTC offset")
    if end <= start:
        raise ValueError("end must be after start")
    if capacity < 0:
        raise ValueError("capacity must not be negative")
    zone, _created = Zone.objects.get_or_create(
        code=zone_code, defaults={"name": zone_code, "timezone": timezone_name}
    )
    slot, created = Slot.objects.get_or_create(
        zone=zone, start=start, end=end, defaults={"capacity": capacity}
    )
    return slot, created


def slots_generate(
    *, days_ahead: int | None = None, today: date | None = None, zones: Iterable[Zone] | None = None
) -> int:
    """Create the slots of the coming days from the active templates; returns how many were new.

    Idempotent: slots that exist (same zone, start, end) are left alone, with their bookings.
    Days are counted in each zone's own time zone, and wall-clock times survive DST changes.
    """
    days = settings.PORCHLIGHT_SLOT_DAYS_AHEAD if days_ahead is None else days_ahead
    created = 0
    for zone in zones if zones is not None else Zone.objects.all():
        tz = zone.tzinfo
        first = today or timezone.localtime(timezone.now(), tz).date()
        templates = list(SlotTemplate.objects.filter(zone=zone, active=True))
        blackouts = set(
            BlackoutDate.objects.filter(
                zone=zone, date__gte=first, date__lt=first + timedelta(days=days)
            ).values_list("date", flat=True)
        )
        new: list[Slot] = []
        for offset in range(days):
            day = first + timedelta(days=offset)
            if day in blackouts:
                continue
            for template in templates:
                if template.weekday != day.weekday():
                    continue
                start = datetime.combine(day, template.start_time, tzinfo=tz)
                end = datetime.combine(day, template.end_time, tzinfo=tz)
                new.append(Slot(zone=zone, start=start, end=end, capacity=template.capacity))
        if new:
            before = Slot.objects.filter(zone=zone).count()
            Slot.objects.bulk_create(new, ignore_conflicts=True)
            created += Slot.objects.filter(zone=zone).count() - before
    return created


def slots_for_delivery(*, delivery: Delivery, days_ahead: int | None = None) -> list[Slot]:
    """The zone's coming slots a customer may see, without blacked-out days."""
    days = settings.PORCHLIGHT_SLOT_DAYS_AHEAD if days_ahead is None else days_ahead
    zone = Zone.objects.filter(code=delivery.zone_code).first() if delivery.zone_code else None
    if zone is None:
        return []
    now = timezone.now()
    slots = list(
        Slot.objects.filter(zone=zone, start__gt=now, start__lt=now + timedelta(days=days + 1))
        .select_related("zone")
        .order_by("start", "end", "pk")
    )
    blackouts = set(
        zone.blackouts.filter(date__gte=now.date() - timedelta(days=1)).values_list("date", flat=True)
    )
    return [slot for slot in slots if slot.local_date not in blackouts]
