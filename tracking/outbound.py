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
from datetime import timedelta
from typing import Any

import requests
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from tracking import signing
from tracking.models import Delivery, OutboundEvent, OutboundStatus

logger = logging.getLogger(__name__)

OUTBOUND_TYPES = ("delivery.slot_booked", "delivery.instructions_updated", "delivery.feedback")
BACKOFF_BASE = 2.0
BACKOFF_CAP = 600.0


def outbound_enqueue(*, delivery: Delivery, type: str, data: dict[str, Any]) -> OutboundEvent:
    """Queue one event for the routing backend. Call it inside the change's transaction."""
    if type not in OUTBOUND_TYPES:
        raise ValueError(f"unknown outbound event type {type!r}")
    now = timezone.now()
    row = OutboundEvent.objects.create(
        event_id=f"pl_{uuid.uuid4().hex}",
        type=type,
        delivery=delivery,
        data={"reference": delivery.reference, **data},
        occurred_at=now,
        next_attempt_at=now,
    )
    from tracking.tasks import outbound_send

    outbound_send.delay_on_commit(row.pk)
    return row


def backoff_delay(attempts: int) -> float:
    """Full jitter (AWS): uniform between 0 and the capped exponential."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(attempts, 20)))


def _claim(outbound_id: int) -> OutboundEvent | None:
    """Take the row for one try if it is due, under a lease; commit before the network call."""
    now = timezone.now()
    with transaction.atomic():
        row = OutboundEvent.objects.select_for_update(skip_locked=True).filter(pk=outbound_id).first()
        if row is None or row.next_attempt_at > now:
            return None
        if row.status == OutboundStatus.SENDING and row.lease_until and row.lease_until > now:
            return None  # another worker is sending it right now
        if row.status not in (OutboundStatus.QUEUED, OutboundStatus.SENDING):
            return None
        row.status = OutboundStatus.SENDING
        row.attempts += 1
        row.lease_until = now + timedelta(seconds=settings.PORCHLIGHT_OUTBOUND_TIMEOUT + 30)
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
        OutboundEvent.objects.filter(pk=row.pk).update(
            status=OutboundStatus.SENT, sent_at=now, lease_until=None, last_error=""
        )
        return None
    give_up_at = row.created_at + timedelta(seconds=settings.PORCHLIGHT_OUTBOUND_GIVE_UP_AFTER)
    if now >= give_up_at:
        logger.error("outbound event %s failed for good after %s attempts", row.event_id, row.attempts)
        OutboundEvent.objects.filter(pk=row.pk).update(
            status=OutboundStatus.FAILED, lease_until=None, last_error=error
        )
        return None
    delay = backoff_delay(row.attempts)
    OutboundEvent.objects.filter(pk=row.pk).update(
        status=OutboundStatus.QUEUED,
        lease_until=None,
        last_error=error,
        next_attempt_at=now + timedelta(seconds=delay),
    )
    return delay


def _post(row: OutboundEvent) -> str | None:
    """POST the row, signed. None on 2xx, else what went wrong."""
    secret = settings.PORCHLIGHT_OUTBOUND_SECRET
    if not secret:
        return "PORCHLIGHT_OUTBOUND_SECRET is not set"
    body = json.dumps({"events": [row.envelope()]}, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", signing.HEADER: signing.sign(secret=secret, body=body)}
    try:
        response = requests.post(
            settings.PORCHLIGHT_ROUTING_URL,
            data=body,
            headers=headers,
            timeout=settings.PORCHLIGHT_OUTBOUND_TIMEOUT,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}: {response.text[:200]}"


def outbound_due_ids(*, limit: int = 500) -> list[int]:
    """Rows the sweeper should hand to a worker: due, or whose sender's lease ran out."""
    now = timezone.now()
    due = Q(status=OutboundStatus.QUEUED) | Q(status=OutboundStatus.SENDING, lease_until__lt=now)
    return list(
        OutboundEvent.objects.filter(due, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
