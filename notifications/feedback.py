"""What providers and customers tell us back: Twilio inbound SMS and status callbacks, ESP
tracking events. Services of feedback live here rather than in services.py, which writes and
sends messages.

Each callback is kept once under the provider's idempotency key, so a repeated callback
changes nothing; a message's status only moves forward (a late "sent" never undoes
"delivered").
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from notifications.models import Channel, InboundMessage, Notification, ProviderEvent, Status
from notifications.services import _finish, consent_set, email_normalize, phone_normalize

logger = logging.getLogger(__name__)

OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN = frozenset({"START", "YES", "UNSTOP"})
HELP = frozenset({"HELP", "INFO"})

REPLIES = {
    "en": {
        "opt_out": "Porchlight: you will get no more texts from us. Reply START to get them again.",
        "opt_in": "Porchlight: delivery texts are back on. Reply STOP to opt out.",
        "help": "Porchlight delivery updates. Reply STOP to opt out, START to opt back in. "
        "Your tracking link has the full details.",
    },
    "es": {
        "opt_out": "Porchlight: no te enviaremos mas SMS. Responde START para volver a recibirlos.",
        "opt_in": "Porchlight: vuelves a recibir SMS de tus entregas. Responde STOP para no recibirlos.",
        "help": "Avisos de entrega de Porchlight. Responde STOP para no recibir SMS y START para "
        "volver a recibirlos. Tu enlace de seguimiento tiene todos los detalles.",
    },
}

# How far up a message's status may move; it never moves down (delivered, then a late "sent").
RANK: dict[str, int] = {
    Status.QUEUED: 0, Status.SENDING: 1, Status.SENT: 2, Status.DELIVERED: 3, Status.UNDELIVERED: 3,
    Status.FAILED: 3, Status.DEAD: 3, Status.SKIPPED: 3, Status.BOUNCED: 4, Status.COMPLAINED: 4,
}  # fmt: skip
TWILIO_STATUSES = {
    "sent": Status.SENT,
    "delivered": Status.DELIVERED,
    "read": Status.DELIVERED,
    "undelivered": Status.UNDELIVERED,
    "failed": Status.FAILED,
}
ESP_STATUSES = {
    "sent": Status.SENT,
    "delivered": Status.DELIVERED,
    "bounced": Status.BOUNCED,
    "rejected": Status.FAILED,
    "failed": Status.FAILED,
    "complained": Status.COMPLAINED,
}
SUPPRESSING_ESP_EVENTS = frozenset({"bounced", "complained", "unsubscribed"})


@dataclass(frozen=True)
class Reply:
    text: str


def keyword_of(body: str) -> str:
    """STOP, Stop., " stop ", "opt-out" all read as one keyword; anything longer is free text."""
    return re.sub(r"[\s\-_.,!¡?¿'\"]+", "", body or "").upper()[:20]


def sms_inbound_handle(*, sender: str, body: str, provider_id: str) -> Reply | None:
    """A text from a customer: keywords change consent; free text waits for staff."""
    number = phone_normalize(sender) or sender.strip()[:40]
    keyword = keyword_of(body)
    action = (
        "opt_out"
        if keyword in OPT_OUT
        else "opt_in"
        if keyword in OPT_IN
        else "help"
        if keyword in HELP
        else "review"
    )
    try:
        with transaction.atomic():
            InboundMessage.objects.create(
                provider_id=provider_id[:64], sender=number, body=body[:2000], action=action,
                needs_review=action == "review", received_at=timezone.now(),
            )  # fmt: skip
            if action == "opt_out":
                consent_set(channel=Channel.SMS, address=number, opted_out=True, reason=f"keyword {keyword}")
            elif action == "opt_in":
                consent_set(channel=Channel.SMS, address=number, opted_out=False, reason=f"keyword {keyword}")
    except IntegrityError:
        return None  # Twilio sent this message again; it was handled the first time
    if action == "review":
        return None
    return Reply(REPLIES[_language_of(number)][action])


def _language_of(number: str) -> str:
    latest = (
        Notification.objects.filter(recipient=number)
        .order_by("-pk")
        .values_list("language", flat=True)
        .first()
    )
    return latest if latest in REPLIES else "en"


def sms_status_record(
    *,
    key: str,
    notification_id: int | None,
    provider_id: str,
    status: str,
    error_code: str,
    payload: dict[str, Any],
) -> None:
    """A Twilio status callback. Unknown messages are kept and otherwise ignored."""
    new_status = TWILIO_STATUSES.get(status)
    with transaction.atomic():
        row = _find(Channel.SMS, notification_id, provider_id)
        if not _keep_event(key, "twilio", row, status, error_code, payload):
            return
        if row is None or new_status is None:
            return
        if error_code == "21610":
            consent_set(channel=Channel.SMS, address=row.recipient, opted_out=True, reason="21610")
        _advance(row, new_status, error_code=error_code)


def email_event_record(
    *,
    key: str,
    notification_id: int | None,
    provider_id: str,
    event_type: str,
    recipient: str,
    payload: dict[str, Any],
) -> None:
    """An ESP tracking event (through anymail). Bounces, complaints and unsubscribes suppress the address."""
    with transaction.atomic():
        row = _find(Channel.EMAIL, notification_id, provider_id)
        if not _keep_event(key, "esp", row, event_type, "", payload):
            return
        address = email_normalize(recipient or (row.recipient if row else ""))
        if event_type in SUPPRESSING_ESP_EVENTS and address:
            consent_set(channel=Channel.EMAIL, address=address, opted_out=True, reason=event_type)
        new_status = ESP_STATUSES.get(event_type)
        if row is not None and new_status is not None:
            _advance(row, new_status, error_code="")


def _find(channel: str, notification_id: int | None, provider_id: str) -> Notification | None:
    rows = (
        Notification.objects.select_for_update(of=("self",))
        .select_related("delivery")
        .filter(channel=channel)
    )
    if notification_id is not None:
        row = rows.filter(pk=notification_id).first()
        # The id in the callback URL is ours; the provider id must agree once we know it.
        if row is not None and (not row.provider_id or not provider_id or row.provider_id == provider_id):
            return row
    return rows.filter(provider_id=provider_id).first() if provider_id else None


def _keep_event(
    key: str, provider: str, row: Notification | None, status: str, error_code: str, payload: dict[str, Any]
) -> bool:
    try:
        with transaction.atomic():
            ProviderEvent.objects.create(
                key=key[:200], notification=row, provider=provider, status=status[:20],
                error_code=error_code[:32], payload=payload, received_at=timezone.now(),
            )  # fmt: skip
    except IntegrityError:
        return False  # the same callback again
    return True


def _advance(row: Notification, status: str, *, error_code: str) -> None:
    if RANK.get(status, 0) <= RANK.get(row.status, 0):
        return
    if status in (Status.UNDELIVERED, Status.FAILED) and row.channel == Channel.SMS:
        _finish(row, status, error=f"provider reported {status}", code=error_code, now=timezone.now())
        return
    row.status, row.status_at = status, timezone.now()
    row.error_code = error_code or row.error_code
    row.save(update_fields=["status", "status_at", "error_code"])
