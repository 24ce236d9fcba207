"""Small factories of routing-backend events (contract v1, section 1) with valid defaults."""

from __future__ import annotations

import base64
import io
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

BASE_TIME = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
_ids = itertools.count(1)


def next_id(prefix: str = "evt") -> str:
    return f"{prefix}_{next(_ids):06d}"


def at(minutes: float = 0) -> str:
    """An RFC 3339 timestamp `minutes` after a fixed base, with an offset as the contract asks."""
    return (BASE_TIME + timedelta(minutes=minutes)).astimezone(UTC).isoformat()


def event(
    type: str, data: dict[str, Any], *, id: str | None = None, occurred_at: str | None = None
) -> dict[str, Any]:
    return {"id": id or next_id(), "type": type, "occurred_at": occurred_at or at(), "data": data}


def upserted(
    reference: str = "ORD-1", *, minutes: float = 0, id: str | None = None, **data: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "reference": reference,
        "customer": {
            "name": "Ana García", "phone": "+19565550123", "email": "ana@example.com", "locale": "es",
        },
        "address": {
            "line1": "1201 Matamoros St", "city": "Laredo", "postcode": "78040", "country": "US",
            "lat": 27.5036, "lon": -99.5075,
        },
        "timezone": "America/Chicago",
        "window": {"start": at(60), "end": at(180)},
        "zone": "laredo-central",
        "items": 2,
    }  # fmt: skip
    body.update(data)
    return event("delivery.upserted", body, id=id, occurred_at=at(minutes))


def status(
    reference: str = "ORD-1",
    value: str = "out_for_delivery",
    *,
    minutes: float = 1,
    id: str | None = None,
    **data: Any,
) -> dict[str, Any]:
    return event(
        "delivery.status", {"reference": reference, "status": value, **data}, id=id, occurred_at=at(minutes)
    )


def eta(
    reference: str = "ORD-1",
    *,
    minutes: float = 2,
    eta_minutes: float = 90,
    id: str | None = None,
    **data: Any,
) -> dict[str, Any]:
    return event(
        "delivery.eta",
        {"reference": reference, "eta": at(eta_minutes), **data},
        id=id,
        occurred_at=at(minutes),
    )


def ping(
    driver_id: str = "drv_7",
    *,
    minutes: float = 3,
    lat: float = 27.53,
    lon: float = -99.48,
    id: str | None = None,
    **data: Any,
) -> dict[str, Any]:
    body = {"driver_id": driver_id, "lat": lat, "lon": lon, "recorded_at": at(minutes), **data}
    return event("driver.location", body, id=id, occurred_at=at(minutes))


def proof(
    reference: str = "ORD-1", *, minutes: float = 4, id: str | None = None, **data: Any
) -> dict[str, Any]:
    body = {"reference": reference, "recipient_name": "Ana", **data}
    if "photo" not in data and "photo_url" not in data:
        body["photo"] = data_url("PNG")
    return event("delivery.proof", body, id=id, occurred_at=at(minutes))


def image_bytes(kind: str = "PNG", size: tuple[int, int] = (8, 6)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (230, 120, 20)).save(buffer, kind)
    return buffer.getvalue()


def data_url(kind: str = "PNG", content: bytes | None = None, *, declared: str | None = None) -> str:
    """A `data:` URL of an image of `kind`, declared as `declared` (default: the same)."""
    content = image_bytes(kind) if content is None else content
    mime = {"PNG": "image/png", "JPEG": "image/jpeg"}[declared or kind]
    return f"data:{mime};base64,{base64.b64encode(content).decode()}"


LIFECYCLE = ("created", "scheduled", "out_for_delivery", "arriving", "delivered")
