"""What the customer's tracking page reads and decides (issue 3).

Services for the page and its socket. They live here rather than in services.py, which holds
the intake; the outbox has its own module for the same reason.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from tracking.models import Delivery, DeliveryProof, Driver, EventResult, InboundEvent, Status
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


@dataclass(frozen=True)
class PageVersion:
    """What a tracking page depends on, read in one small query (no ORM compilation)."""

    delivery_id: int
    locale: str
    key: str  # changes whenever anything the page shows changes


def _version_sql() -> str:
    q = connection.ops.quote_name
    delivery, driver, proof = Delivery._meta.db_table, Driver._meta.db_table, DeliveryProof._meta.db_table
    # Only quoted identifiers are formatted in; the token is a query parameter.
    return (
        f"SELECT d.{q('id')}, d.{q('updated_at')}, d.{q('status')}, d.{q('status_at')}, "  # noqa: S608
        f"d.{q('token_revoked_at')}, d.{q('locale')}, r.{q('updated_at')}, p.{q('occurred_at')} "
        f"FROM {q(delivery)} d LEFT JOIN {q(driver)} r ON r.{q('id')} = d.{q('driver_id')} "
        f"LEFT JOIN {q(proof)} p ON p.{q('delivery_id')} = d.{q('id')} "
        f"WHERE d.{q('tracking_token')} = %s"
    )


def _aware(value: Any) -> datetime | None:
    # PostgreSQL gives aware datetimes; SQLite gives naive ones (or text) in UTC.
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else parse_datetime(str(value))
    return parsed.replace(tzinfo=UTC) if parsed and parsed.tzinfo is None else parsed


def _row_for_token(query: str, token: object) -> tuple[Any, ...] | None:
    """The one row `query` finds for a token of the right shape (its only parameter), or None."""
    if not isinstance(token, str) or not TOKEN_SHAPE.fullmatch(token):
        return None
    with connection.cursor() as cursor:
        cursor.execute(query, [token])
        row = cursor.fetchone()
    return tuple(row) if row is not None else None


def page_version(*, token: str) -> PageVersion | None:
    """The version of the page behind a usable token, or None (same cases as delivery_for_token).

    The hot path of the page: a revisit (304) or a page already rendered costs only this.
    """
    row = _row_for_token(_version_sql(), token)
    if row is None:
        return None
    pk, updated_at, status, status_at, revoked_at, locale, driver_at, proof_at = row
    probe = Delivery(status=status, status_at=_aware(status_at), token_revoked_at=_aware(revoked_at))
    if not probe.token_is_usable(now=timezone.now()):
        return None
    stamps = [_aware(value) for value in (updated_at, driver_at, proof_at)]
    key = "|".join([str(pk), *(stamp.isoformat() if stamp else "" for stamp in stamps)])
    return PageVersion(delivery_id=pk, locale=locale, key=key)


# What a socket reads of its delivery and driver: the privacy rule, the language and the state
# message (tracking.live.delivery_state), nothing else.
SOCKET_DELIVERY_FIELDS = {
    "id", "locale", "status", "status_at", "token_revoked_at", "stops_before", "driver_id", "eta",
    "eta_window_start", "eta_window_end", "window_start", "window_end",
}  # fmt: skip
SOCKET_DRIVER_FIELDS = {"id", "lat", "lon", "heading", "position_recorded_at", "updated_at"}


@functools.cache
def _socket_fields() -> tuple[list[models.Field[Any, Any]], list[models.Field[Any, Any]]]:
    """The socket's fields of each model, in the models' own order (Model.from_db wants it)."""
    return (
        [f for f in Delivery._meta.concrete_fields if f.attname in SOCKET_DELIVERY_FIELDS],
        [f for f in Driver._meta.concrete_fields if f.attname in SOCKET_DRIVER_FIELDS],
    )


@functools.cache
def _socket_sql() -> str:
    q = connection.ops.quote_name
    delivery_fields, driver_fields = _socket_fields()
    columns = [f"d.{q(str(f.column))}" for f in delivery_fields]
    columns += [f"r.{q(str(f.column))}" for f in driver_fields]
    # Only quoted identifiers are formatted in; the token is a query parameter.
    return (
        f"SELECT {', '.join(columns)} FROM {q(Delivery._meta.db_table)} d "  # noqa: S608
        f"LEFT JOIN {q(Driver._meta.db_table)} r ON r.{q('id')} = d.{q('driver_id')} "
        f"WHERE d.{q('tracking_token')} = %s"
    )


def socket_delivery(*, token: str) -> Delivery | None:
    """The delivery (with its driver) behind a usable token, as a socket needs it: the same
    answer as delivery_for_token, in one query the ORM does not compile.

    A socket's handshake reads its delivery twice (before it is accepted, and after it joined
    its groups); compiling delivery_for_token's query was most of what a handshake cost, and a
    fleet reconnecting at once after a restart waits on exactly that. Fields other than these
    are deferred: reading one costs a query, as with .only().
    """
    row = _row_for_token(_socket_sql(), token)
    if row is None:
        return None
    delivery_fields, driver_fields = _socket_fields()
    values = [
        _aware(value) if isinstance(field, models.DateTimeField) else value
        for field, value in zip([*delivery_fields, *driver_fields], row, strict=True)
    ]
    split = len(delivery_fields)
    delivery = Delivery.from_db(connection.alias, [f.attname for f in delivery_fields], values[:split])
    driver = None
    if delivery.driver_id is not None:
        driver = Driver.from_db(connection.alias, [f.attname for f in driver_fields], values[split:])
    Delivery.driver.field.set_cached_value(delivery, driver)  # type: ignore[attr-defined]
    if not delivery.token_is_usable(now=timezone.now()):
        return None
    return delivery


def page_version_of(delivery: Delivery) -> str:
    """The same key as page_version, from a loaded delivery."""
    proof = delivery_proof(delivery)
    stamps = [
        delivery.updated_at,
        delivery.driver.updated_at if delivery.driver else None,
        proof.occurred_at if proof else None,
    ]
    return "|".join([str(delivery.pk), *(stamp.isoformat() if stamp else "" for stamp in stamps)])


def delivery_proof(delivery: Delivery) -> DeliveryProof | None:
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
    return language_for(delivery.locale, requested)


def language_for(locale: str, requested: str | None = None) -> str:
    """The page language: the visible switch wins, else the delivery's locale, else English."""
    supported = {code for code, _ in settings.LANGUAGES}
    if requested in supported:
        return str(requested)
    primary = (locale or "").split("-")[0].lower()
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
