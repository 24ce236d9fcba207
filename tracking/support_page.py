"""What the support desk's delivery page shows: one chronological timeline of everything that
happened (routing events, messages with their provider status, bookings, customer actions,
staff actions), the driver and a small map, the link and the customer's consent.

A bounded number of queries whatever the history: each source is read once, newest first,
cut at TIMELINE_PER_SOURCE rows, then merged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from notifications.models import Channel, Consent, InboundMessage, Notification
from notifications.models import Status as MessageStatus
from notifications.services import email_normalize, phone_normalize
from scheduling.models import BookedBy, Booking, BookingChange, Slot
from scheduling.services import booking_closed_reason, slots_for_delivery
from tracking.models import Delivery, InboundEvent, OutboundEvent, Status, SupportAction, SupportActionKind
from tracking.services import tracking_url

TIMELINE_PER_SOURCE = 200
BAD_MESSAGE_STATUSES = frozenset(
    {MessageStatus.UNDELIVERED, MessageStatus.FAILED, MessageStatus.BOUNCED, MessageStatus.DEAD}
)


@dataclass(frozen=True)
class TimelineItem:
    at: datetime
    source: str  # routing | message | booking | customer | staff | outbox
    title: str
    detail: str = ""
    status: str = ""
    error: str = ""
    actor: str = ""
    problem: bool = False


@dataclass(frozen=True)
class MapPoint:
    x: float
    y: float


@dataclass(frozen=True)
class SmallMap:
    """The stop at the centre of a 200x200 box, the driver placed by distance and bearing."""

    driver: MapPoint | None
    distance_m: float | None
    osm_url: str


@dataclass
class SupportPage:
    delivery: Delivery
    link: str
    link_works: bool
    booking: Booking | None
    driver_position_age: float | None  # seconds
    small_map: SmallMap
    consent: list[tuple[str, str, str]]  # (channel, address, state)
    timeline: list[TimelineItem]
    slots: list[Slot] = field(default_factory=list)
    booking_closed: str = ""
    late: bool = False


def support_page(*, delivery: Delivery, now: datetime | None = None) -> SupportPage:
    """Everything the delivery page shows; `delivery` loaded with its driver."""
    now = now or timezone.now()
    booking = Booking.objects.filter(delivery=delivery).select_related("slot__zone").first()
    driver = delivery.driver
    age = (
        (now - driver.position_recorded_at).total_seconds()
        if driver and driver.position_recorded_at
        else None
    )
    closed = booking_closed_reason(delivery=delivery)
    return SupportPage(
        delivery=delivery,
        link=tracking_url(delivery),
        link_works=delivery.token_is_usable(now=now),
        booking=booking,
        driver_position_age=age,
        small_map=small_map(delivery),
        consent=consent_states(delivery=delivery),
        timeline=delivery_timeline(delivery=delivery),
        slots=slots_for_delivery(delivery=delivery) if closed is None else [],
        booking_closed=str(closed or ""),
        late=delivery_is_late(delivery, now=now),
    )


def delivery_is_late(delivery: Delivery, *, now: datetime) -> bool:
    """Not finished, and the ETA is past the window's end (or the window is over)."""
    if delivery.is_finished or delivery.window_end is None:
        return False
    if delivery.eta is not None:
        return delivery.eta > delivery.window_end
    return delivery.window_end < now


def small_map(delivery: Delivery) -> SmallMap:
    osm = f"https://www.openstreetmap.org/?mlat={delivery.lat:.5f}&mlon={delivery.lon:.5f}#map=16/{delivery.lat:.5f}/{delivery.lon:.5f}"
    driver = delivery.driver
    if driver is None or driver.lat is None or driver.lon is None:
        return SmallMap(None, None, osm)
    # Equirectangular: metres east and north of the stop (good to a few per cent in a city).
    east = math.radians(driver.lon - delivery.lon) * 6_371_000 * math.cos(math.radians(delivery.lat))
    north = math.radians(driver.lat - delivery.lat) * 6_371_000
    distance = math.hypot(east, north)
    # Log scale: 100 m and 20 km both fit in the box's radius of 80 px.
    radius = 80 * min(1.0, math.log10(1 + distance / 100) / math.log10(201)) if distance else 0.0
    x = 100 + (radius * east / distance if distance else 0.0)
    y = 100 - (radius * north / distance if distance else 0.0)
    return SmallMap(MapPoint(round(x, 1), round(y, 1)), distance, osm)


def consent_states(*, delivery: Delivery) -> list[tuple[str, str, str]]:
    """May we text and e-mail this customer: STOP and bounces per address, and their choices."""
    preference = getattr(delivery, "notification_preference", None)
    addresses = [
        (Channel.SMS, phone_normalize(delivery.phone)),
        (Channel.EMAIL, email_normalize(delivery.email)),
    ]
    wanted = [(channel, address) for channel, address in addresses if address]
    opted: dict[tuple[str, str], Consent] = {}
    if wanted:
        query = Consent.objects.none()
        for channel, address in wanted:
            query = query | Consent.objects.filter(channel=channel, address=address)
        opted = {(c.channel, c.address): c for c in query}
    states = []
    for channel, address in addresses:
        if not address:
            states.append((str(channel), "", "no address"))
            continue
        consent = opted.get((channel, address))
        if consent is not None and consent.opted_out:
            states.append(
                (
                    str(channel),
                    address,
                    f"opted out ({consent.reason or 'no reason'}, {consent.changed_at:%Y-%m-%d})",
                )
            )
        elif preference is not None and not getattr(preference, str(channel)):
            states.append((str(channel), address, "turned off by the customer for this delivery"))
        else:
            states.append((str(channel), address, "allowed"))
    return states


def delivery_timeline(*, delivery: Delivery, limit: int = TIMELINE_PER_SOURCE) -> list[TimelineItem]:
    """Every source of the delivery's history, merged oldest first."""
    items: list[TimelineItem] = []
    items += _routing(delivery, limit)
    items += _messages(delivery, limit)
    items += _bookings(delivery, limit)
    items += _outbound(delivery, limit)
    items += _texts_from_customer(delivery, limit)
    items += _staff(delivery, limit)
    if delivery.feedback_at is not None:
        items.append(
            TimelineItem(
                delivery.feedback_at,
                "customer",
                f"Rated the delivery {delivery.rating}/5",
                detail=delivery.feedback_comment[:300],
            )
        )
    items.sort(key=lambda item: item.at)
    return items


def _data(payload: Any) -> dict[str, Any]:
    data = payload.get("data") if isinstance(payload, dict) else None
    return data if isinstance(data, dict) else {}


def _utc_clock(value: object) -> str:
    try:
        at = datetime.fromisoformat(str(value))
    except ValueError:
        return ""
    return f"{at.astimezone(UTC):%H:%M} UTC" if at.tzinfo else ""


def _routing(delivery: Delivery, limit: int) -> list[TimelineItem]:
    rows = InboundEvent.objects.filter(delivery=delivery).order_by("-occurred_at", "-pk")[:limit]
    items = []
    for event in rows:
        data = _data(event.payload)
        if event.type == "delivery.status":
            value = str(data.get("status", ""))
            label = Status(value).label if value in Status.values else value
            title, detail = f"Status: {label}", str(data.get("reason") or "")
        elif event.type == "delivery.eta":
            title = f"ETA {_utc_clock(data.get('eta'))}"
            stops = data.get("stops_before")
            detail = f"{stops} stops before" if stops is not None else ""
        elif event.type == "delivery.upserted":
            title, detail = "Details from the routing backend", ""
        elif event.type == "delivery.proof":
            title, detail = "Proof of delivery", str(data.get("recipient_name") or "")
        else:
            title, detail = event.type, ""
        ignored = event.result not in ("accepted", "pending")
        items.append(
            TimelineItem(
                event.occurred_at or event.received_at,
                "routing",
                title,
                detail[:300],
                status=event.result if ignored else "",
                actor="routing backend",
            )
        )
    return items


def _messages(delivery: Delivery, limit: int) -> list[TimelineItem]:
    rows = Notification.objects.filter(delivery=delivery).order_by("-created_at", "-pk")[:limit]
    return [
        TimelineItem(
            row.created_at,
            "message",
            f"{row.get_kind_display()} by {row.get_channel_display()} to {row.recipient}",
            detail=row.body[:300],
            status=row.status,
            error=" ".join(filter(None, [row.error_code, row.last_error]))[:300],
            problem=row.status in BAD_MESSAGE_STATUSES,
        )
        for row in rows
    ]


def _bookings(delivery: Delivery, limit: int) -> list[TimelineItem]:
    rows = (
        BookingChange.objects.filter(booking__delivery=delivery)
        .select_related("from_slot__zone", "to_slot__zone")
        .order_by("-at", "-pk")[:limit]
    )
    items = []
    for change in rows:
        moves = " → ".join(str(slot) for slot in (change.from_slot, change.to_slot) if slot is not None)
        staff = change.by == BookedBy.STAFF
        items.append(
            TimelineItem(
                change.at,
                "staff" if staff else "booking",
                f"Slot {change.get_action_display()}",
                moves,
                actor=change.staff_user if staff else change.get_by_display(),
            )
        )
    return items


def _outbound(delivery: Delivery, limit: int) -> list[TimelineItem]:
    rows = OutboundEvent.objects.filter(delivery=delivery).order_by("-created_at", "-pk")[:limit]
    items = []
    for event in rows:
        data = event.data if isinstance(event.data, dict) else {}
        if event.type == "delivery.instructions":
            items.append(
                TimelineItem(
                    event.occurred_at,
                    "customer",
                    "Delivery instructions changed",
                    str(data.get("instructions") or "")[:300],
                    actor="customer",
                )
            )
        items.append(
            TimelineItem(
                event.created_at,
                "outbox",
                f"To the routing backend: {event.type}",
                status=event.status,
                error=event.last_error[:300],
                detail=f"{event.attempts} attempt(s)",
                problem=event.status == "failed",
            )
        )
    return items


def _texts_from_customer(delivery: Delivery, limit: int) -> list[TimelineItem]:
    phone = phone_normalize(delivery.phone)
    if not phone:
        return []
    rows = InboundMessage.objects.filter(sender=phone).order_by("-received_at", "-pk")[:limit]
    return [
        TimelineItem(
            row.received_at,
            "customer",
            f"SMS from the customer ({row.action})",
            row.body[:300],
            actor="customer",
        )
        for row in rows
    ]


def _staff(delivery: Delivery, limit: int) -> list[TimelineItem]:
    rows = SupportAction.objects.filter(delivery=delivery).order_by("-at", "-pk")[:limit]
    items = []
    for action in rows:
        detail = action.text
        if action.kind == SupportActionKind.LINK_SENT:
            detail = f"by {action.detail.get('channel', '')} to {action.detail.get('recipient', '')}"
        elif action.kind == SupportActionKind.CONTACT:
            detail = " ".join(filter(None, [f"({action.detail.get('channel', '')})", action.text]))
        items.append(
            TimelineItem(
                action.at,
                "staff",
                str(action.get_kind_display()).capitalize(),
                detail[:2000],
                actor=action.username,
            )
        )
    return items


def deliveries_late(*, now: datetime) -> Q:
    """The list filter's version of delivery_is_late."""
    return (
        ~Q(status__in=[Status.DELIVERED, Status.CANCELLED, Status.RETURNED])
        & Q(window_end__isnull=False)
        & (Q(eta__gt=F("window_end")) | Q(eta__isnull=True, window_end__lt=now))
    )


def delivery_zone_codes(*, limit: int = 200) -> list[str]:
    """The zone codes deliveries have, for the list's filter, in one query that hops along the
    zone_code index (a "loose index scan"): a few dozen index probes instead of reading and
    de-duplicating every delivery as SELECT DISTINCT does."""
    q = connection.ops.quote_name
    table, column = q(Delivery._meta.db_table), q("zone_code")
    query = (
        f"WITH RECURSIVE codes(code) AS ("  # noqa: S608 (quoted identifiers only; the limit is a parameter)
        f" SELECT min({column}) FROM {table}"
        f" UNION ALL"
        f" SELECT (SELECT min({column}) FROM {table} WHERE {column} > codes.code)"
        f" FROM codes WHERE codes.code IS NOT NULL"
        f") SELECT code FROM codes WHERE code IS NOT NULL LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(query, [limit])
        return [row[0] for row in cursor.fetchall()]


def deliveries_failed_since(*, since: datetime) -> Q:
    """Deliveries with a failed attempt since `since`, even if rescheduled after it: an accepted
    `attempt_failed` status event (read through the received-at index, a day of slack for
    events that arrive late), or the status itself."""
    events = InboundEvent.objects.filter(
        delivery=OuterRef("pk"),
        type="delivery.status",
        result="accepted",
        payload__data__status=Status.ATTEMPT_FAILED,
        occurred_at__gte=since,
        received_at__gte=since - timedelta(days=1),
    )
    return Q(Exists(events)) | Q(status=Status.ATTEMPT_FAILED, status_at__gte=since)
