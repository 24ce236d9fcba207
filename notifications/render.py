"""Message text from templates: SMS as `sms/<lang>/<kind>.txt`, email as triplets
`email/<lang>/<kind>-subject.txt`, `-body.txt`, `-body.html`.

SMS and the text parts are rendered with autoescaping off (plain text, never `&amp;`); the
HTML part is escaped as usual. An SMS stays within two segments: if the customer's name
makes it longer (or pushes it into UCS-2), it is rendered again without the name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.template.loader import render_to_string
from django.utils import dateformat, translation

from notifications import rules
from notifications.segments import MAX_SEGMENTS, gsm_friendly, sms_length

if TYPE_CHECKING:
    from tracking.models import Delivery

logger = logging.getLogger(__name__)

LANGUAGES = ("en", "es")
NAME_MAX = 24


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str
    html: str


def language_for(delivery: Delivery) -> str:
    preference = getattr(delivery, "notification_preference", None)
    chosen = (preference.language if preference else "") or delivery.locale or "en"
    base = chosen.replace("_", "-").split("-")[0].lower()
    return base if base in LANGUAGES else "en"


def context_for(delivery: Delivery, kind: str, language: str, extra: dict[str, Any]) -> dict[str, Any]:
    from tracking.services import tracking_url

    tz = rules.zone(delivery.timezone)
    link = tracking_url(delivery)
    public = settings.PORCHLIGHT_PUBLIC_URL
    token = delivery.tracking_token
    eta = _parse(extra.get("eta")) or delivery.eta
    window = _span(delivery.eta_window_start, delivery.eta_window_end, tz) or _span(
        delivery.window_start, delivery.window_end, tz
    )
    proof = getattr(delivery, "proof", None) if kind == "delivered" else None
    return {
        "kind": kind,
        "language": language,
        "name": " ".join(delivery.customer_name.split()[:1])[:NAME_MAX],
        "full_name": delivery.customer_name,
        "reference": delivery.reference,
        "tracking_url": link,
        "slots_url": f"{public}/t/{token}/slots/",
        "preferences_url": f"{public}/t/{token}/notifications/",
        "rating_url": f"{link}#feedback",
        "can_book": kind == "received" and _can_book(delivery),
        "window": window,
        "day": _day(delivery.window_start, tz),
        "eta": _clock(eta, tz),
        "booked_window": _span(delivery.window_start, delivery.window_end, tz),
        "recipient_name": proof.recipient_name[:NAME_MAX] if proof else "",
        "reason": delivery.status_reason[:300],
        "stops_before": delivery.stops_before,
    }


def _can_book(delivery: Delivery) -> bool:
    """Whether the slots page has something for this customer: a known zone, still bookable."""
    if not delivery.zone_code:
        return False
    from scheduling.models import Zone
    from scheduling.services import booking_closed_reason

    return (
        booking_closed_reason(delivery=delivery) is None
        and Zone.objects.filter(code=delivery.zone_code).exists()
    )


def _parse(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _clock(at: datetime | None, tz: Any) -> str:
    return dateformat.format(at.astimezone(tz), "H:i") if at else ""


def _span(start: datetime | None, end: datetime | None, tz: Any) -> str:
    if start is None or end is None:
        return ""
    return f"{_clock(start, tz)}-{_clock(end, tz)}"


def _day(at: datetime | None, tz: Any) -> str:
    # Short day and month names, translated by Django's own locale files ("Tue 24 Nov", "mar 24 nov").
    return dateformat.format(at.astimezone(tz), "D j M") if at else ""


def render(delivery: Delivery, *, kind: str, channel: str, language: str, extra: dict[str, Any]) -> Rendered:
    with translation.override(language):
        context = context_for(delivery, kind, language, extra)
        if channel == "sms":
            return Rendered("", _sms(kind, language, context), "")
        prefix = f"notifications/email/{language}/{kind}"
        subject = " ".join(render_to_string(f"{prefix}-subject.txt", context).split())
        return Rendered(
            subject[:300],
            render_to_string(f"{prefix}-body.txt", context).strip() + "\n",
            render_to_string(f"{prefix}-body.html", context),
        )


def _sms(kind: str, language: str, context: dict[str, Any]) -> str:
    template = f"notifications/sms/{language}/{kind}.txt"
    text = _squeeze(render_to_string(template, context))
    if sms_length(text).segments <= MAX_SEGMENTS:
        return text
    shorter = _squeeze(render_to_string(template, {**context, "name": "", "recipient_name": ""}))
    if sms_length(shorter).segments > MAX_SEGMENTS:
        logger.warning("SMS %s/%s is over %s segments even without the name", language, kind, MAX_SEGMENTS)
    return shorter


def _squeeze(text: str) -> str:
    # Template line breaks are for the reader of the template, not the phone.
    return gsm_friendly(" ".join(text.split()))
