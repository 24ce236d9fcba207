"""Small factories with valid defaults for the scheduling tests."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from scheduling.models import Slot, Zone
from tracking.models import Delivery

_numbers = itertools.count(1)


def make_zone(*, code: str | None = None, tz: str = "America/Chicago", **extra: Any) -> Zone:
    code = code or f"zone-{next(_numbers)}"
    return Zone.objects.create(code=code, name=extra.pop("name", code), timezone=tz, **extra)


def make_slot(*, zone: Zone | None = None, start: datetime | None = None, hours_ahead: float = 48,
              length_hours: float = 2, capacity: int = 10, **extra: Any) -> Slot:  # fmt: skip
    zone = zone or make_zone()
    start = start or (timezone.now() + timedelta(hours=hours_ahead)).replace(microsecond=0)
    return Slot.objects.create(
        zone=zone, start=start, end=start + timedelta(hours=length_hours), capacity=capacity, **extra
    )


def make_delivery(*, zone: Zone | str | None = None, **extra: Any) -> Delivery:
    n = next(_numbers)
    code = zone.code if isinstance(zone, Zone) else (zone or "")
    values: dict[str, Any] = {
        "reference": f"ORD-T{n}",
        "customer_name": "Ana García",
        "phone": "+19565550123",
        "email": "ana@example.com",
        "address_line1": "1201 Matamoros St",
        "city": "Laredo",
        "postcode": "78040",
        "country": "US",
        "lat": 27.5036,
        "lon": -99.5075,
        "timezone": "America/Chicago",
        "zone_code": code,
        "details_at": timezone.now(),
        "status": "scheduled",
    }
    values.update(extra)
    return Delivery.objects.create(**values)
