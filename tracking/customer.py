"""What the customer's tracking page reads and decides (issue 3).

Services for the page and its socket. They live here rather than in services.py, which holds
the intake; the outbox has its own module for the same reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from tracking.models import Delivery, EventResult, InboundEvent, Status
from tracking.outbound import outbound_enqueue

# Tokens are secrets.token_urlsafe(24) (32 chars); anything outside this shape is not looked up.
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{22,64}")
# A long delivery history is cut to its newest entries, so the page stays one bounded query.
TIMELINE_LIMIT = 30
MAX_INSTRUCTIONS = 1000
MAX_SAFE_PLACE = 200
MAX_COMMENT = 2000
# Runs of this many digits or more look like gate or door codes: never echoed back in full.
_CODE = re.compile(r"\d{3,}")
_HAS_DIGIT = re.compile(r"\d")


class CustomerError(Exception):
    """A decision the page cannot take now (e.g. feedback before delivery)."""


@dataclass(frozen=True)
class TimelineEntry:
    occurred_at: datetime
    status: str
    label: str


def delivery_for_token(*, token: str) -> Delivery | None:
    """The delivery behind a usable tracking token, with its driver and proof, or None.

    Unknown, malformed, revoked and expired tokens all give None, so that callers answer
    them the same way.
    """
    if not isinstance(token, str) or not TOKEN_SHAPE.fullmatch(token):
        return None
    delivery = (
        Delivery.objects.select_related("driver", "proof")
        .defer("proof__photo")  # up to 512 KiB: only the photo view reads it
        .filter(tracking_token=token)
        .first()
    )
    if delivery is None or not delivery.token_is_usable(now=timezone.now()):
        return None
    return delivery


def delivery_proof(delivery: Delivery) -> object | None:
    try:
        return delivery.proof
    except Delivery.proof.RelatedObjectDoesNotExist:  # type: ignore[attr-defined]
        return None


def delivery_timeline(*, delivery: Delivery) -> list[TimelineEntry]:
    """Status changes as they happened at the source, oldest first (one query)."""
    rows = (
        InboundEvent.objects.filter(
            delivery=delivery,
            type="delivery.status",
            result__in=(EventResult.ACCEPTED, EventResult.STALE),
        )
        .order_by("-occurred_at", "-pk")
        .values_list("occurred_at", "payload__data__status")[:TIMELINE_LIMIT]
    )
    labels = dict(Status.choices)
    entries = [
        TimelineEntry(occurred_at=at, status=status, label=str(labels[status]))
        for at, status in rows
        if at is not None and status in labels
    ]
    entries.reverse()
    return entries


def delivery_zone(delivery: Delivery) -> ZoneInfo:
    try:
        return ZoneInfo(delivery.timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def delivery_language(delivery: Delivery, requested: str | None = None) -> str:
    """The page language: the visible switch wins, else the delivery's locale, else English."""
    supported = {code for code, _ in settings.LANGUAGES}
    if requested in supported:
        return str(requested)
    primary = (delivery.locale or "").split("-")[0].lower()
    return primary if primary in supported else settings.LANGUAGE_CODE


def address_hint(delivery: Delivery) -> str:
    """Enough of the address to recognise it: the street without numbers, and the city.

    House and flat numbers (line 2 entirely) stay off the page, as the link can be forwarded.
    """
    street = " ".join(word for word in delivery.address_line1.split() if not _HAS_DIGIT.search(word))
    return ", ".join(part for part in (street.strip(" ,"), delivery.city) if part)


def mask_codes(text: str) -> str:
    """Customer text as shown back: digit runs keep only their last two digits."""
    return _CODE.sub(lambda m: "•" * (len(m.group()) - 2) + m.group()[-2:], text)


def can_change_instructions(delivery: Delivery) -> bool:
    return not delivery.is_finished


def can_leave_feedback(delivery: Delivery) -> bool:
    return delivery.status == Status.DELIVERED and delivery.rating is None


def delivery_update_instructions(*, delivery: Delivery, instructions: str, safe_place: str) -> Delivery:
    """Keep the customer's instructions and send them to the routing backend (outbox)."""
    if not can_change_instructions(delivery):
        raise CustomerError("finished")
    instructions = instructions.strip()[:MAX_INSTRUCTIONS]
    safe_place = safe_place.strip()[:MAX_SAFE_PLACE]
    with transaction.atomic():
        Delivery.objects.filter(pk=delivery.pk).update(
            instructions=instructions, safe_place=safe_place, updated_at=timezone.now()
        )
        outbound_enqueue(
            delivery=delivery,
            type="delivery.instructions_updated",
            data={"instructions": instructions, "safe_place": safe_place or None},
        )
    delivery.instructions, delivery.safe_place = instructions, safe_place
    return delivery


def delivery_leave_feedback(*, delivery: Delivery, rating: int, comment: str) -> Delivery:
    """One rating per delivery, after it was delivered; sent as `delivery.feedback`."""
    if not 1 <= rating <= 5:
        raise CustomerError("rating")
    comment = comment.strip()[:MAX_COMMENT]
    now = timezone.now()
    with transaction.atomic():
        # The conditional update makes a double submit (two tabs, a retry) count once.
        updated = Delivery.objects.filter(
            pk=delivery.pk, status=Status.DELIVERED, rating__isnull=True
        ).update(rating=rating, feedback_comment=comment, feedback_at=now, updated_at=now)
        if not updated:
            raise CustomerError("not_now")
        outbound_enqueue(
            delivery=delivery,
            type="delivery.feedback",
            data={"rating": rating, "comment": comment or None},
        )
    delivery.rating, delivery.feedback_comment, delivery.feedback_at = rating, comment, now
    return delivery
