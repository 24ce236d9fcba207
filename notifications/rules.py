"""Which changes call for a message, whether it is still worth sending, and when not to send.

Every rule is here, so that what customers receive can be read in one place. A rule firing is
named by a dedupe key; a message exists once per key and channel, so repeated or duplicate
events never repeat a message.

| kind             | fires when                                                              | key per   |
| ---------------- | ----------------------------------------------------------------------- | --------- |
| received         | a new delivery is created                                               | delivery  |
| out_for_delivery | the status becomes out_for_delivery                                     | local day |
| approaching      | status arriving, or an ETA with stops_before <= 2 or ETA <= 10 min away | local day |
| delayed          | ETA >= promised/booked window end + 15 min; again only 30 min later     | ETA       |
| delivered        | the status becomes delivered                                            | delivery  |
| attempt_failed   | the status becomes attempt_failed                                       | local day |
| booked / moved   | the customer books or moves a slot                                      | slot      |
| reminder         | the day before the window, from Celery beat                             | window    |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings

from notifications.models import Kind

if TYPE_CHECKING:
    from tracking.models import Delivery
    from tracking.services import Change

APPROACHING_STOPS = 2
APPROACHING_MINUTES = 10
DELAY_THRESHOLD = timedelta(minutes=15)
DELAY_STEP = timedelta(minutes=30)
ON_THE_WAY = ("out_for_delivery", "arriving")
FINISHED = ("delivered", "cancelled", "returned")


@dataclass(frozen=True)
class Firing:
    kind: str
    key: str
    context: dict[str, Any] = field(default_factory=dict)


def firings_for_change(change: Change, *, last_delay_eta: datetime | None) -> list[Firing]:
    """The messages one applied change calls for. `last_delay_eta`: the ETA the last delay
    message of this delivery announced, if any."""
    delivery = change.delivery
    pk = delivery.pk
    day = local_date(change.event.occurred_at, delivery.timezone).isoformat()
    if change.kind == "created":
        return [Firing(Kind.RECEIVED, f"{pk}:received")]
    if change.kind == "status":
        status = delivery.status
        if status == change.previous.get("status"):
            return []
        if status == "out_for_delivery":
            return [Firing(Kind.OUT_FOR_DELIVERY, f"{pk}:out_for_delivery:{day}")]
        if status == "arriving":
            return [Firing(Kind.APPROACHING, f"{pk}:approaching:{day}")]
        if status == "delivered":
            return [Firing(Kind.DELIVERED, f"{pk}:delivered")]
        if status == "attempt_failed":
            return [Firing(Kind.ATTEMPT_FAILED, f"{pk}:attempt_failed:{day}")]
        return []
    if change.kind == "eta" and delivery.eta is not None and delivery.status not in FINISHED:
        firings = []
        if delivery.status in ON_THE_WAY and _is_close(delivery, at=change.event.occurred_at):
            firings.append(Firing(Kind.APPROACHING, f"{pk}:approaching:{day}"))
        if is_delayed(delivery, last_delay_eta=last_delay_eta):
            eta = delivery.eta.isoformat(timespec="minutes")
            firings.append(Firing(Kind.DELAYED, f"{pk}:delayed:{eta}", {"eta": eta}))
        return firings
    return []


def _is_close(delivery: Delivery, *, at: datetime) -> bool:
    if delivery.stops_before is not None and delivery.stops_before <= APPROACHING_STOPS:
        return True
    return delivery.eta is not None and delivery.eta - at <= timedelta(minutes=APPROACHING_MINUTES)


def is_delayed(delivery: Delivery, *, last_delay_eta: datetime | None) -> bool:
    if delivery.eta is None or delivery.window_end is None:
        return False
    if delivery.eta < delivery.window_end + DELAY_THRESHOLD:
        return False
    return last_delay_eta is None or delivery.eta >= last_delay_eta + DELAY_STEP


def firing_for_booking(*, delivery: Delivery, moved: bool) -> Firing:
    start = delivery.window_start.isoformat(timespec="minutes") if delivery.window_start else "none"
    return Firing(Kind.MOVED if moved else Kind.BOOKED, f"{delivery.pk}:booked:{start}")


def firing_for_reminder(*, delivery: Delivery) -> Firing:
    start = delivery.window_start.isoformat(timespec="minutes") if delivery.window_start else "none"
    return Firing(Kind.REMINDER, f"{delivery.pk}:reminder:{start}")


def is_still_useful(kind: str, delivery: Delivery) -> bool:
    """At send time: would the message still tell the customer something true?

    A message held overnight by quiet hours may have been overtaken by events ("on the way"
    for a delivery that was delivered since).
    """
    status = delivery.status
    if kind in (Kind.OUT_FOR_DELIVERY, Kind.APPROACHING, Kind.DELAYED):
        return status in ON_THE_WAY or (kind == Kind.DELAYED and status == "scheduled")
    if kind in (Kind.RECEIVED, Kind.BOOKED, Kind.MOVED, Kind.REMINDER):
        return status not in FINISHED and status not in ON_THE_WAY
    if kind == Kind.ATTEMPT_FAILED:
        return status == "attempt_failed"
    return True


def may_break_quiet_hours(kind: str) -> bool:
    # Only then is the driver really at the door; or support is sending the link the customer
    # is asking for on the phone right now.
    return kind in (Kind.APPROACHING, Kind.TRACKING_LINK)


# --- quiet hours ---------------------------------------------------------------------------


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def local_date(at: datetime, tz_name: str) -> date:
    return at.astimezone(zone(tz_name)).date()


def quiet_hours() -> tuple[time, time] | None:
    value = settings.NOTIFY_QUIET_HOURS
    if not value:
        return None
    start, end = (time.fromisoformat(part.strip()) for part in value.split("-"))
    return None if start == end else (start, end)


def quiet_until(*, at: datetime, tz_name: str) -> datetime | None:
    """If `at` falls in quiet hours where the customer lives, when they end; else None."""
    hours = quiet_hours()
    if hours is None:
        return None
    start, end = hours
    tz = zone(tz_name)
    local = at.astimezone(tz)
    now = local.time()
    if start > end:  # spans midnight, e.g. 21:00-08:00
        if now >= start:
            wake_day = local.date() + timedelta(days=1)
        elif now < end:
            wake_day = local.date()
        else:
            return None
    elif start <= now < end:
        wake_day = local.date()
    else:
        return None
    # Wall-clock 08:00 of that day; zoneinfo resolves DST days to the right UTC instant.
    return datetime.combine(wake_day, end, tzinfo=tz)
