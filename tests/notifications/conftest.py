"""Fixtures for notification tests: messages go to the locmem SMS backend and anymail's test
email backend, the two seams; quiet hours are off unless a test turns them on."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone

from notifications.backends import locmem
from tracking.models import Delivery

_refs = itertools.count(1)


@pytest.fixture(autouse=True)
def _message_seams(settings: Any) -> None:
    settings.SMS_BACKEND = "notifications.backends.locmem.SMSBackend"
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    settings.NOTIFY_QUIET_HOURS = ""
    settings.PORCHLIGHT_PUBLIC_URL = "https://porch.example"
    settings.TWILIO_AUTH_TOKEN = "test-twilio-token"
    settings.TWILIO_ACCOUNT_SID = "AC" + "0" * 32
    settings.TWILIO_FROM = "+15005550006"
    locmem.outbox.clear()
    mail.outbox = []


def make_delivery(**values: Any) -> Delivery:
    """A valid delivery with both contacts; override what the test is about."""
    now = timezone.now()
    defaults: dict[str, Any] = {
        "reference": f"ORD-T{next(_refs)}",
        "customer_name": "Ana García",
        "phone": "+19565550123",
        "email": "ana@example.com",
        "locale": "en",
        "address_line1": "1201 Matamoros St",
        "city": "Laredo",
        "postcode": "78040",
        "country": "US",
        "lat": 27.5,
        "lon": -99.5,
        "timezone": "America/Chicago",
        "window_start": now + timedelta(hours=2),
        "window_end": now + timedelta(hours=4),
        "details_at": now,
        "status": "created",
    }
    defaults.update(values)
    return Delivery.objects.create(**defaults)


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def upsert(
    ref: str,
    *,
    at: datetime,
    phone: str | None = "+19565550123",
    email: str | None = None,
    locale: str = "en",
    window: tuple[datetime, datetime] | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    customer: dict[str, Any] = {"name": "Ana García", "locale": locale}
    if phone:
        customer["phone"] = phone
    if email:
        customer["email"] = email
    data: dict[str, Any] = {
        "reference": ref,
        "customer": customer,
        "address": {
            "line1": "1 Main St",
            "city": "Laredo",
            "postcode": "78040",
            "country": "US",
            "lat": 27.5,
            "lon": -99.5,
        },
        "timezone": "America/Chicago",
    }
    if window:
        data["window"] = {"start": iso(window[0]), "end": iso(window[1])}
    return {
        "id": event_id or f"up-{ref}-{next(_refs)}",
        "type": "delivery.upserted",
        "occurred_at": iso(at),
        "data": data,
    }


def status(ref: str, value: str, *, at: datetime, event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or f"st-{ref}-{next(_refs)}",
        "type": "delivery.status",
        "occurred_at": iso(at),
        "data": {"reference": ref, "status": value},
    }


def eta(
    ref: str, value: datetime, *, at: datetime, stops_before: int | None = None, event_id: str | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {"reference": ref, "eta": iso(value)}
    if stops_before is not None:
        data["stops_before"] = stops_before
    return {
        "id": event_id or f"eta-{ref}-{next(_refs)}",
        "type": "delivery.eta",
        "occurred_at": iso(at),
        "data": data,
    }
