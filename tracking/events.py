"""Reading the routing backend's events (contract v1, section 1) into checked values.

Everything here is pure: no database. `parse_event` turns one untrusted JSON value into an
`Event`, or raises `Invalid` with field errors keyed by path ("data.customer.phone").
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email

from tracking.models import Status

EVENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
BCP47 = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,4}")
PHOTO_PREFIXES = {"data:image/jpeg;base64,": "JPEG", "data:image/png;base64,": "PNG"}
MAX_PHOTO_BYTES = 512 * 1024
# Refused before decoding: a proof photo never needs more. JPEGs decode at 1/8 scale.
MAX_PIXELS = {"JPEG": 64_000_000, "PNG": 16_000_000}
MAX_TEXT = 2000

EVENT_TYPES = (
    "delivery.upserted",
    "delivery.status",
    "delivery.eta",
    "driver.location",
    "delivery.proof",
)
STATUSES = frozenset(Status.values)
_https_url = URLValidator(schemes=["https"])


class Invalid(Exception):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(errors)
        self.errors = errors


@dataclass
class Event:
    id: str
    type: str
    occurred_at: datetime
    raw: dict[str, Any]
    # `raw` as stored: UTF-8 JSON (storable_json).
    raw_json: bytes = b""
    # The delivery's reference, or "" for driver pings.
    reference: str = ""
    values: dict[str, Any] = field(default_factory=dict)


class _Reader:
    """Collects every error of one event instead of stopping at the first."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def fail(self, path: str, message: str) -> None:
        self.errors.setdefault(path, message)

    def obj(
        self, parent: dict[str, Any], key: str, path: str, *, required: bool = True
    ) -> dict[str, Any] | None:
        value = parent.get(key)
        if value is None:
            if required:
                self.fail(path, "This field is required.")
            return None
        if not isinstance(value, dict):
            self.fail(path, "Must be an object.")
            return None
        return value

    def text(
        self, parent: dict[str, Any], key: str, path: str, *, required: bool = True, max_length: int = 200
    ) -> str:
        value = parent.get(key)
        if value is None or value == "":
            if required:
                self.fail(path, "This field is required.")
            return ""
        if not isinstance(value, str):
            self.fail(path, "Must be a string.")
            return ""
        if len(value) > max_length:
            self.fail(path, f"At most {max_length} characters.")
            return ""
        return value

    def number(
        self,
        parent: dict[str, Any],
        key: str,
        path: str,
        *,
        required: bool = True,
        low: float | None = None,
        high: float | None = None,
    ) -> float | None:
        value = parent.get(key)
        if value is None:
            if required:
                self.fail(path, "This field is required.")
            return None
        # A JSON integer may be too big for a float (10**400): that is a bad value, not a crash.
        if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
            self.fail(path, "Must be a number.")
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            self.fail(
                path, f"Must be between {low} and {high}." if high is not None else f"Must be at least {low}."
            )
            return None
        return float(value)

    def count(self, parent: dict[str, Any], key: str, path: str, *, required: bool = False) -> int | None:
        value = parent.get(key)
        if value is None:
            if required:
                self.fail(path, "This field is required.")
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
            self.fail(path, "Must be a whole number from 0 to 1000000.")
            return None
        return value

    def timestamp(
        self, parent: dict[str, Any], key: str, path: str, *, required: bool = True
    ) -> datetime | None:
        value = parent.get(key)
        if value is None:
            if required:
                self.fail(path, "This field is required.")
            return None
        parsed = parse_timestamp(value)
        if parsed is None:
            self.fail(path, "Must be an RFC 3339 timestamp with an offset, e.g. 2026-11-21T10:00:00-06:00.")
        return parsed

    def window(self, parent: dict[str, Any], key: str, path: str) -> tuple[datetime | None, datetime | None]:
        window = self.obj(parent, key, path, required=False)
        if window is None:
            return None, None
        start = self.timestamp(window, "start", f"{path}.start")
        end = self.timestamp(window, "end", f"{path}.end")
        if start and end and end < start:
            self.fail(f"{path}.end", "Must not be before start.")
        return start, end


def _finite(value: int | float) -> bool:
    if isinstance(value, int):
        return abs(value) < 10**300
    return math.isfinite(value)


def parse_timestamp(value: object) -> datetime | None:
    if not isinstance(value, str) or len(value) > 40:
        return None
    match = RFC3339.fullmatch(value)
    if not match:
        return None
    date, time, fraction, offset = match.groups()
    fraction = (fraction or "")[:7]  # Python keeps microseconds: 6 digits after the dot
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        parsed = datetime.fromisoformat(f"{date}T{time}{fraction}{offset}")
        # Stored in UTC: 9999-12-31T23:00:00-12:00 exists here but not there.
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def is_storable(value: object) -> bool:
    """False if any string holds NUL or a lone surrogate, a number is not finite (1e400
    parses as inf), or it nests deeper than 32: none of them belongs in PostgreSQL's jsonb."""
    return storable_json(value) is not None


def storable_json(value: object) -> bytes | None:
    """`value` as UTF-8 JSON if `is_storable`, else None. The intake stores these bytes as
    the event's payload, so each event is serialised once.

    One C-speed json.dumps does the string and number checks; only containers are walked,
    and only when the text has enough brackets to nest deeper than 32."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        data = text.encode("utf-8")  # a lone surrogate cannot be encoded
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return None
    if "\\u0000" in text and _ESCAPED_NUL.search(text) is not None:
        return None
    # Brackets inside strings count too, which only makes this shortcut more careful.
    if text.count("{") + text.count("[") > 32 and not _shallow(value, 0):
        return None
    return data


# "\u0000" in the JSON text is a NUL unless its backslash is itself escaped ("\\u0000").
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _shallow(value: object, depth: int) -> bool:
    if depth > 32:
        return False
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return all(_shallow(child, depth + 1) for child in children if isinstance(child, dict | list))


def event_id_of(raw: object) -> str | None:
    if isinstance(raw, dict):
        value = raw.get("id")
        if isinstance(value, str) and EVENT_ID.fullmatch(value):
            return value
    return None


def parse_event(raw: object) -> Event:
    if not isinstance(raw, dict):
        raise Invalid({"": "An event must be a JSON object."})
    reader = _Reader()
    event_id = event_id_of(raw)
    if event_id is None:
        reader.fail("id", "Must be 1 to 64 characters of A-Z a-z 0-9 _ . : -")
    kind = raw.get("type")
    if kind not in EVENT_TYPES:
        reader.fail("type", f"Must be one of {', '.join(EVENT_TYPES)}.")
    occurred_at = reader.timestamp(raw, "occurred_at", "occurred_at")
    data = reader.obj(raw, "data", "data")
    raw_json = storable_json(raw)
    if raw_json is None:
        reader.fail(
            "", "Text must be valid Unicode without NUL characters, numbers finite, nesting at most 32 deep."
        )
    if reader.errors or data is None:
        raise Invalid(reader.errors)
    assert event_id is not None and occurred_at is not None and isinstance(kind, str) and raw_json is not None
    event = Event(id=event_id, type=kind, occurred_at=occurred_at, raw=raw, raw_json=raw_json)
    PARSERS[kind](reader, data, event)
    if reader.errors:
        raise Invalid(reader.errors)
    return event


def _reference(reader: _Reader, data: dict[str, Any], event: Event) -> None:
    event.reference = reader.text(data, "reference", "data.reference")


def _parse_upserted(reader: _Reader, data: dict[str, Any], event: Event) -> None:
    _reference(reader, data, event)
    values = event.values
    customer = reader.obj(data, "customer", "data.customer") or {}
    address = reader.obj(data, "address", "data.address") or {}
    values["customer_name"] = reader.text(customer, "name", "data.customer.name")
    country = reader.text(address, "country", "data.address.country", max_length=2).upper()
    if country and not re.fullmatch(r"[A-Z]{2}", country):
        reader.fail("data.address.country", "Must be an ISO 3166-1 alpha-2 code.")
    values["phone"] = _phone(reader, customer, country)
    values["email"] = _email(reader, customer)
    if (
        customer
        and not values["phone"]
        and not values["email"]
        and "data.customer.phone" not in reader.errors
    ):
        reader.fail("data.customer", "At least one of phone or email is required.")
    locale = reader.text(customer, "locale", "data.customer.locale", required=False, max_length=35) or "en"
    if not BCP47.fullmatch(locale):
        reader.fail("data.customer.locale", "Must be a BCP 47 language tag, e.g. en or es-MX.")
    values["locale"] = locale
    values["address_line1"] = reader.text(address, "line1", "data.address.line1", max_length=300)
    values["address_line2"] = reader.text(
        address, "line2", "data.address.line2", required=False, max_length=300
    )
    values["city"] = reader.text(address, "city", "data.address.city")
    values["postcode"] = reader.text(address, "postcode", "data.address.postcode", max_length=32)
    values["country"] = country
    values["lat"] = reader.number(address, "lat", "data.address.lat", low=-90, high=90)
    values["lon"] = reader.number(address, "lon", "data.address.lon", low=-180, high=180)
    values["timezone"] = _timezone(reader, data)
    values["window_start"], values["window_end"] = reader.window(data, "window", "data.window")
    values["zone_code"] = reader.text(data, "zone", "data.zone", required=False, max_length=64)
    values["items"] = reader.count(data, "items", "data.items")


def _phone(reader: _Reader, customer: dict[str, Any], country: str) -> str:
    raw = reader.text(customer, "phone", "data.customer.phone", required=False, max_length=40)
    if not raw:
        return ""
    try:
        number = phonenumbers.parse(raw, country or None)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_possible_number(number):
        reader.fail("data.customer.phone", "Must be a phone number in E.164 form, e.g. +19565550123.")
        return ""
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _email(reader: _Reader, customer: dict[str, Any]) -> str:
    email = reader.text(customer, "email", "data.customer.email", required=False, max_length=254)
    if email:
        try:
            validate_email(email)
        except ValidationError:
            reader.fail("data.customer.email", "Must be an email address.")
            return ""
    return email


def _timezone(reader: _Reader, data: dict[str, Any]) -> str:
    name = reader.text(data, "timezone", "data.timezone", required=False, max_length=64) or "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        reader.fail("data.timezone", "Must be an IANA time zone name, e.g. America/Chicago.")
        return "UTC"
    return name


def _parse_status(reader: _Reader, data: dict[str, Any], event: Event) -> None:
    _reference(reader, data, event)
    status = data.get("status")
    if not isinstance(status, str) or status not in STATUSES:
        reader.fail("data.status", f"Must be one of {', '.join(sorted(STATUSES))}.")
    event.values["status"] = status
    event.values["reason"] = reader.text(data, "reason", "data.reason", required=False, max_length=MAX_TEXT)
    driver = reader.obj(data, "driver", "data.driver", required=False)
    if driver is not None:
        driver_id = reader.text(driver, "id", "data.driver.id", max_length=64)
        event.values["driver"] = {
            "external_id": driver_id,
            "name": reader.text(driver, "name", "data.driver.name", required=False),
            "vehicle": reader.text(driver, "vehicle", "data.driver.vehicle", required=False),
        }
    else:
        event.values["driver"] = None


def _parse_eta(reader: _Reader, data: dict[str, Any], event: Event) -> None:
    _reference(reader, data, event)
    event.values["eta"] = reader.timestamp(data, "eta", "data.eta")
    event.values["eta_window_start"], event.values["eta_window_end"] = reader.window(
        data, "window", "data.window"
    )
    event.values["stops_before"] = reader.count(data, "stops_before", "data.stops_before")


def _parse_location(reader: _Reader, data: dict[str, Any], event: Event) -> None:
    event.values = {
        "driver_id": reader.text(data, "driver_id", "data.driver_id", max_length=64),
        "lat": reader.number(data, "lat", "data.lat", low=-90, high=90),
        "lon": reader.number(data, "lon", "data.lon", low=-180, high=180),
        "heading": reader.number(data, "heading", "data.heading", required=False, low=0, high=360),
        "speed_mps": reader.number(data, "speed_mps", "data.speed_mps", required=False, low=0, high=1000),
        "accuracy_m": reader.number(data, "accuracy_m", "data.accuracy_m", required=False, low=0, high=1e6),
        "recorded_at": reader.timestamp(data, "recorded_at", "data.recorded_at"),
    }


def _parse_proof(reader: _Reader, data: dict[str, Any], event: Event) -> None:
    _reference(reader, data, event)
    values = event.values
    values["recipient_name"] = reader.text(data, "recipient_name", "data.recipient_name", required=False)
    values["note"] = reader.text(data, "note", "data.note", required=False, max_length=MAX_TEXT)
    values["photo"], values["photo_content_type"] = _photo(reader, data)
    photo_url = reader.text(data, "photo_url", "data.photo_url", required=False, max_length=2000)
    if photo_url:
        try:
            _https_url(photo_url)
        except ValidationError:
            reader.fail("data.photo_url", "Must be an https URL.")
    values["photo_url"] = photo_url
    if not values["photo"] and not photo_url and not reader.errors:
        reader.fail("data", "A proof needs photo or photo_url.")


def _photo(reader: _Reader, data: dict[str, Any]) -> tuple[bytes | None, str]:
    value = data.get("photo")
    if value is None:
        return None, ""
    path = "data.photo"
    if not isinstance(value, str):
        reader.fail(path, "Must be a data: URL string.")
        return None, ""
    prefix = next((p for p in PHOTO_PREFIXES if value.startswith(p)), None)
    if prefix is None:
        reader.fail(path, "Must start with data:image/jpeg;base64, or data:image/png;base64,")
        return None, ""
    encoded = value[len(prefix) :]
    if len(encoded) > (MAX_PHOTO_BYTES // 3 + 1) * 4 + 4:
        reader.fail(path, "The photo is larger than 512 KiB.")
        return None, ""
    try:
        photo = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        reader.fail(path, "Not valid base64.")
        return None, ""
    if len(photo) > MAX_PHOTO_BYTES:
        reader.fail(path, "The photo is larger than 512 KiB.")
        return None, ""
    expected = PHOTO_PREFIXES[prefix]
    if _image_format(photo) != expected:
        reader.fail(path, f"Does not decode as a {expected} image.")
        return None, ""
    return photo, "image/jpeg" if expected == "JPEG" else "image/png"


def _image_format(photo: bytes) -> str | None:
    """The format of `photo` if it decodes in full as an image, else None.

    Pillow's verify() checks PNG chunk CRCs but not JPEG data, so the pixels are decoded
    too: a truncated or corrupt file fails here. JPEGs decode in draft mode (1/8 scale,
    the whole stream still read) and sizes are capped in pixels, so that half a megabyte
    of compressed data cannot make us allocate gigabytes."""
    from PIL import Image

    # Only these two decoders ever see the bytes (no EPS through Ghostscript, no exotic plugin).
    formats = ["JPEG", "PNG"]
    try:
        with Image.open(io.BytesIO(photo), formats=formats) as image:
            image_format = image.format or ""
            image.verify()
        with Image.open(io.BytesIO(photo), formats=formats) as image:
            width, height = image.size
            if width * height > MAX_PIXELS[image_format]:
                return None
            if image_format == "JPEG":
                image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
            image.load()
    except Exception:  # Pillow raises many kinds for hostile bytes; all mean "not an image"
        return None
    return image_format


PARSERS = {
    "delivery.upserted": _parse_upserted,
    "delivery.status": _parse_status,
    "delivery.eta": _parse_eta,
    "driver.location": _parse_location,
    "delivery.proof": _parse_proof,
}
