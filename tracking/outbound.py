"""The outbox to the routing backend (contract v1, section 2).

A feature calls `outbound_enqueue` inside its own transaction; the row and the change commit
together, and a Celery task sends it after the commit. Sending is at least once: a stable
`id` per change lets the receiver drop repeats. Failures back off with full jitter in the
database (`next_attempt_at`), where a beat sweeper finds them; nothing waits in Celery for
long, so a lost worker or broker loses nothing. Services of the outbox live here rather
than in services.py, which holds the intake.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import requests
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from tracking import background, signing
from tracking.models import Delivery, OutboundEvent, OutboundStatus

logger = logging.getLogger(__name__)

# The keys of `data` for each type, as the contract lists them; `reference` is added here.
OUTBOUND_FIELDS: dict[str, frozenset[str]] = {
    "delivery.slot_booked": frozenset({"reference", "slot", "previous", "by"}),
    "delivery.instructions_updated": frozenset({"reference", "instructions", "safe_place"}),
    "delivery.feedback": frozenset({"reference", "rating", "comment"}),
}
OUTBOUND_TYPES = tuple(OUTBOUND_FIELDS)
BACKOFF_BASE = 2.0
BACKOFF_CAP = 600.0
# A Celery countdown may fire a few milliseconds before the time it was computed from.
DUE_TOLERANCE = timedelta(seconds=1)
# A lease outlives one POST (connect + read timeouts) with room to write the outcome.
LEASE_MARGIN = 30.0
ERROR_BODY_BYTES = 200
# A row a sweep handed to a worker is not handed out again before this, unless a worker
# took it meanwhile: a lost task costs this much delay, a stopped worker no broker pile-up.
DISPATCH_GRACE = timedelta(seconds=120)


def outbound_enqueue(*, delivery: Delivery, type: str, data: dict[str, Any]) -> OutboundEvent:
    """Queue one event for the routing backend. Call it inside the change's transaction.

    `data` holds the contract's fields for `type` except `reference`; datetimes are written
    as RFC 3339 strings.
    """
    fields = OUTBOUND_FIELDS.get(type)
    if fields is None:
        raise ValueError(f"unknown outbound event type {type!r}")
    payload = json.loads(json.dumps({"reference": delivery.reference, **data}, cls=DjangoJSONEncoder))
    if set(payload) != fields:
        raise ValueError(f"{type} data must have exactly {sorted(fields)}, not {sorted(payload)}")
    now = timezone.now()
    row = OutboundEvent.objects.create(
        event_id=f"pl_{uuid.uuid4().hex}",
        type=type,
        delivery=delivery,
        data=payload,
        occurred_at=now,
        next_attempt_at=now,
    )
    _publish_on_commit([row.pk])
    return row


def outbound_retry(*, ids: Iterable[int]) -> int:
    """Staff's "retry now": failed or waiting rows become due at once and are sent.

    The give-up horizon still counts from the row's creation, so a retried row that fails
    again is flagged for staff again at once, with its new error.
    """
    with transaction.atomic():
        pks = list(
            OutboundEvent.objects.select_for_update()
            .filter(pk__in=list(ids), status__in=[OutboundStatus.QUEUED, OutboundStatus.FAILED])
            .values_list("pk", flat=True)
        )
        OutboundEvent.objects.filter(pk__in=pks).update(
            status=OutboundStatus.QUEUED, next_attempt_at=timezone.now(), lease_until=None
        )
        _publish_on_commit(pks)
    return len(pks)


def _publish_on_commit(pks: list[int]) -> None:
    # Not Celery's delay_on_commit: its callback is not robust, so a broker outage right after
    # the commit would surface as an error for a change that is already saved. The row is
    # committed either way and the sweeper sends it.
    if pks:
        # Off the request path: a stalled broker must not hold the request (tracking.background).
        transaction.on_commit(partial(background.run_soon, partial(_publish, pks)), robust=True)


def _publish(pks: list[int]) -> None:
    from tracking.tasks import outbound_send

    for pk in pks:
        try:
            outbound_send.delay(pk)
        except Exception:
            logger.warning(
                "could not queue outbound events %s; the sweeper will send them", pks, exc_info=True
            )
            return


def backoff_delay(attempts: int) -> float:
    """Full jitter (AWS): uniform between 0 and the capped exponential."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(attempts, 20)))


def _claim(outbound_id: int) -> OutboundEvent | None:
    """Take the row for one try if it is due, under a lease; commit before the network call."""
    now = timezone.now()
    with transaction.atomic():
        row = OutboundEvent.objects.select_for_update(skip_locked=True).filter(pk=outbound_id).first()
        if row is None or row.next_attempt_at > now + DUE_TOLERANCE:
            return None
        if row.status == OutboundStatus.SENDING and row.lease_until and row.lease_until > now:
            return None  # another worker is sending it right now
        if row.status not in (OutboundStatus.QUEUED, OutboundStatus.SENDING):
            return None
        row.status = OutboundStatus.SENDING
        row.attempts += 1
        row.lease_until = now + timedelta(seconds=settings.PORCHLIGHT_OUTBOUND_TIMEOUT + LEASE_MARGIN)
        row.save(update_fields=["status", "attempts", "lease_until"])
    return row


def outbound_deliver(*, outbound_id: int) -> float | None:
    """Try to send one outbox row. Returns the seconds until the next try, or None."""
    if not settings.PORCHLIGHT_ROUTING_URL:
        return None  # kept in the outbox until a routing URL is configured
    row = _claim(outbound_id)
    if row is None:
        return None
    error = _post(row)
    now = timezone.now()
    if error is None:
        # Sent is sent, even if our lease ran out and another worker holds the row now.
        OutboundEvent.objects.filter(
            pk=row.pk, status__in=[OutboundStatus.QUEUED, OutboundStatus.SENDING]
        ).update(status=OutboundStatus.SENT, sent_at=now, lease_until=None, last_error="")
        return None
    # A failure is only ours to record while we still hold the row: a worker that took it
    # over after our lease ran out may have sent it meanwhile.
    ours = OutboundEvent.objects.filter(pk=row.pk, status=OutboundStatus.SENDING, attempts=row.attempts)
    give_up_at = row.created_at + timedelta(seconds=settings.PORCHLIGHT_OUTBOUND_GIVE_UP_AFTER)
    if now >= give_up_at:
        logger.error(
            "outbound event %s failed for good after %s attempts: %s", row.event_id, row.attempts, error
        )
        ours.update(status=OutboundStatus.FAILED, lease_until=None, last_error=error)
        return None
    delay = backoff_delay(row.attempts)
    logger.info(
        "outbound event %s attempt %s failed (%s); next in %.1f s", row.event_id, row.attempts, error, delay
    )
    updated = ours.update(
        status=OutboundStatus.QUEUED,
        lease_until=None,
        last_error=error,
        next_attempt_at=now + timedelta(seconds=delay),
    )
    return delay if updated else None


def _post(row: OutboundEvent) -> str | None:
    """POST the row, signed. None on 2xx, else what went wrong."""
    secret = settings.PORCHLIGHT_OUTBOUND_SECRET
    if not secret:
        return "PORCHLIGHT_OUTBOUND_SECRET is not set"
    body = json.dumps({"events": [row.envelope()]}, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", signing.HEADER: signing.sign(secret=secret, body=body)}
    try:
        # stream=True: an error page is read only as far as the few bytes kept in last_error.
        with requests.post(
            settings.PORCHLIGHT_ROUTING_URL,
            data=body,
            headers=headers,
            timeout=settings.PORCHLIGHT_OUTBOUND_TIMEOUT,
            allow_redirects=False,
            stream=True,
        ) as response:
            if 200 <= response.status_code < 300:
                return None
            snippet = next(response.iter_content(ERROR_BODY_BYTES), b"")[:ERROR_BODY_BYTES]
            return f"HTTP {response.status_code}: {snippet.decode('utf-8', 'replace')}"
    except requests.RequestException as exc:
        return f"{type(exc).__name__}: {exc}"[:500]


def _due(now: datetime) -> Q:
    # A queued row's lease_until means "handed to a worker by a sweep": not again until then.
    queued = Q(status=OutboundStatus.QUEUED) & (Q(lease_until__isnull=True) | Q(lease_until__lt=now))
    abandoned = Q(status=OutboundStatus.SENDING, lease_until__lt=now)
    return (queued | abandoned) & Q(next_attempt_at__lte=now)


def outbound_due_ids(*, limit: int = 500) -> list[int]:
    """Rows a sweep would hand to a worker: due, or whose sender's lease ran out."""
    if not settings.PORCHLIGHT_ROUTING_URL:
        return []  # nothing can be sent; the rows wait in the outbox
    return list(
        OutboundEvent.objects.filter(_due(timezone.now()))
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )


def outbound_dispatch_due(*, limit: int = 500) -> list[int]:
    """Mark the due rows as handed to a worker for DISPATCH_GRACE and return them.

    Without the mark, a sweep every 30 s while no worker consumes would pile up a copy of
    every due row per sweep in the broker. A row whose sender died goes back to queued: its
    late outcome, if any, is ignored (see outbound_deliver).
    """
    if not settings.PORCHLIGHT_ROUTING_URL:
        return []
    now = timezone.now()
    with transaction.atomic():
        pks = list(
            OutboundEvent.objects.select_for_update(skip_locked=True)
            .filter(_due(now))
            .order_by("next_attempt_at")
            .values_list("pk", flat=True)[:limit]
        )
        OutboundEvent.objects.filter(pk__in=pks).update(
            status=OutboundStatus.QUEUED, lease_until=now + DISPATCH_GRACE
        )
    return pks


def outbound_overdue(*, now: datetime | None = None) -> tuple[int, float]:
    """Rows that should be with a worker, and how long the oldest has waited (seconds)."""
    if not settings.PORCHLIGHT_ROUTING_URL:
        return 0, 0.0  # waiting for a routing URL is not a stuck queue
    now = now or timezone.now()
    due = OutboundEvent.objects.filter(_due(now))
    oldest = due.order_by("next_attempt_at").values_list("next_attempt_at", flat=True).first()
    return due.count(), max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
