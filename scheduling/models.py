"""Delivery zones, their weekly slot templates, the slots customers book, and the bookings.

`Slot.booked` is a counter kept equal to the number of bookings that hold the slot; it is
only ever changed by conditional UPDATEs in scheduling.services, never by saving a Slot
loaded earlier (that would write back a stale count). A CHECK constraint makes the database
itself refuse a count above capacity, as a last line of defence.
"""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from django.db import models
from django.utils import timezone as dj_timezone
from django.utils.translation import gettext_lazy as _


class Zone(models.Model):
    code = models.CharField(max_length=64, unique=True, help_text="as in the routing backend's `zone`")
    name = models.CharField(max_length=200)
    timezone = models.CharField(max_length=64, default="UTC", help_text="IANA name, e.g. America/Chicago")

    def __str__(self) -> str:
        return self.name or self.code

    @property
    def tzinfo(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class Weekday(models.IntegerChoices):
    MONDAY = 0, _("Monday")
    TUESDAY = 1, _("Tuesday")
    WEDNESDAY = 2, _("Wednesday")
    THURSDAY = 3, _("Thursday")
    FRIDAY = 4, _("Friday")
    SATURDAY = 5, _("Saturday")
    SUNDAY = 6, _("Sunday")


class SlotTemplate(models.Model):
    """A weekly window in the zone's local time; slots are generated from it."""

    zone = models.ForeignKey(Zone, on_delete=models.CASCADE, related_name="templates")
    weekday = models.PositiveSmallIntegerField(choices=Weekday.choices)
    start_time = models.TimeField()
    end_time = models.TimeField()
    capacity = models.PositiveIntegerField()
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["zone", "weekday", "start_time"]
        constraints = [
            models.UniqueConstraint(
                fields=["zone", "weekday", "start_time", "end_time"], name="template_unique"
            ),
            models.CheckConstraint(
                condition=models.Q(end_time__gt=models.F("start_time")), name="template_ends_after_start"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.zone.code} {self.get_weekday_display()} {self.start_time:%H:%M}-{self.end_time:%H:%M}"


class BlackoutDate(models.Model):
    """A local date on which a zone takes no deliveries (holidays, depot closed)."""

    zone = models.ForeignKey(Zone, on_delete=models.CASCADE, related_name="blackouts")
    date = models.DateField()
    reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["zone", "date"]
        constraints = [models.UniqueConstraint(fields=["zone", "date"], name="blackout_unique")]

    def __str__(self) -> str:
        return f"{self.zone.code} {self.date}"


class Slot(models.Model):
    zone = models.ForeignKey(Zone, on_delete=models.PROTECT, related_name="slots")
    start = models.DateTimeField()
    end = models.DateTimeField()
    capacity = models.PositiveIntegerField()
    booked = models.PositiveIntegerField(default=0, editable=False)

    class Meta:
        ordering = ["start", "end", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["zone", "start", "end"], name="slot_unique"),
            models.CheckConstraint(
                condition=models.Q(end__gt=models.F("start")), name="slot_ends_after_start"
            ),
            models.CheckConstraint(
                condition=models.Q(booked__lte=models.F("capacity")), name="slot_within_capacity"
            ),
        ]
        indexes = [models.Index(fields=["zone", "start"], name="slot_zone_start")]

    def __str__(self) -> str:
        local = self.local_start
        return f"{self.zone.code} {local:%Y-%m-%d %H:%M}-{self.local_end:%H:%M}"

    @property
    def local_start(self) -> datetime:
        return dj_timezone.localtime(self.start, self.zone.tzinfo)

    @property
    def local_end(self) -> datetime:
        return dj_timezone.localtime(self.end, self.zone.tzinfo)

    @property
    def local_date(self) -> date:
        return self.local_start.date()

    @property
    def remaining(self) -> int:
        return max(self.capacity - self.booked, 0)

    @property
    def is_full(self) -> bool:
        return self.booked >= self.capacity

    @property
    def is_few_left(self) -> bool:
        # "Few" relative to the slot's size, but never more than 3 places.
        return not self.is_full and self.remaining <= min(3, max(1, self.capacity // 5))

    def as_event(self) -> dict[str, str]:
        """The slot as the contract's `slot` object: local times with their offset."""
        return {
            "start": self.local_start.isoformat(),
            "end": self.local_end.isoformat(),
            "zone": self.zone.code,
        }


class BookedBy(models.TextChoices):
    CUSTOMER = "customer", _("customer")
    STAFF = "staff", _("staff")
    # The routing backend ended the delivery (cancelled or returned): its place is given back.
    ROUTING = "routing", _("routing backend")


class Booking(models.Model):
    """The one booking of a delivery. `slot` is null once it was cancelled."""

    delivery = models.OneToOneField("tracking.Delivery", on_delete=models.CASCADE, related_name="booking")
    slot = models.ForeignKey(Slot, null=True, blank=True, on_delete=models.PROTECT, related_name="bookings")
    # Moves and re-bookings after the first booking; capped by PORCHLIGHT_BOOKING_MAX_CHANGES.
    changes = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.delivery_id} -> {self.slot or 'cancelled'}"


class BookingAction(models.TextChoices):
    BOOKED = "booked", _("booked")
    MOVED = "moved", _("moved")
    CANCELLED = "cancelled", _("cancelled")


class BookingChange(models.Model):
    """History: who changed a booking, when, from which slot to which."""

    booking = models.ForeignKey(Booking, on_delete=models.CASCADE, related_name="history")
    action = models.CharField(max_length=16, choices=BookingAction.choices)
    from_slot = models.ForeignKey(Slot, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    to_slot = models.ForeignKey(Slot, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    by = models.CharField(max_length=16, choices=BookedBy.choices)
    staff_user = models.CharField(max_length=150, blank=True)
    at = models.DateTimeField(default=dj_timezone.now)

    class Meta:
        ordering = ["at", "pk"]

    def __str__(self) -> str:
        return f"{self.action} by {self.by} at {self.at:%Y-%m-%d %H:%M}"
