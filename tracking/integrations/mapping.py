"""What both adapters share: the native events they build, epoch times, countries, time zones.

Everything here is pure (no database). Providers' values are untrusted and their keys come and
go: every reader here returns an empty value rather than raising, and the native parser
(`tracking.events.parse_event`) has the last word on what is valid.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

import phonenumbers
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from phonenumbers import timezone as phone_timezones
from phonenumbers.geodata.locale import LOCALE_DATA

# Epoch values outside these years are not times a delivery happens at (or are in the wrong unit).
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
_LATEST = datetime(2100, 1, 1, tzinfo=UTC).timestamp()
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_COUNTRY_ALIASES = {"USA": "US", "U.S.A.": "US", "U.S.": "US", "UK": "GB", "UAE": "AE"}


@dataclass
class Mapped:
    """One provider payload as native events of the routing contract."""

    key: str  # the provider's idempotency key
    kind: str  # the trigger name or event type
    reference: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    ignored: str = ""  # why it gave no event, when it gave none


class Malformed(Exception):
    """The body is JSON but not the provider's envelope: 400."""


def event_id(provider: str, key: str, role: str) -> str:
    """A native event id derived from the provider's key, stable across deliveries and replays.

    Hashed: provider ids hold characters the contract's ids do not allow (Onfleet's `*` and `~`,
    Spoke's `/`) and can be longer than 64 characters."""
    digest = hashlib.sha256(f"{provider}\x00{key}".encode()).hexdigest()[:32]
    return f"{provider}:{digest}:{role}"


def native(
    provider: str, key: str, role: str, type: str, occurred_at: datetime, data: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": event_id(provider, key, role),
        "type": type,
        "occurred_at": rfc3339(occurred_at),
        "data": data,
    }


class Builder:
    """What the Onfleet and Spoke builders share: native events named after the provider's key,
    and the status event (with the driver, where the payload names one)."""

    provider = ""

    def __init__(self, mapped: Mapped, at: datetime) -> None:
        self.mapped = mapped
        self.at = at

    def driver(self) -> dict[str, Any] | None:
        return None

    def add(self, role: str, type: str, data: dict[str, Any], at: datetime | None = None) -> None:
        self.mapped.events.append(native(self.provider, self.mapped.key, role, type, at or self.at, data))

    def status(self, status: str, reason: str = "", at: datetime | None = None) -> None:
        data: dict[str, Any] = {"reference": self.mapped.reference, "status": status}
        if driver := self.driver():
            data["driver"] = driver
        if reason:
            data["reason"] = reason
        self.add("st", "delivery.status", data, at)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def from_epoch(value: object, *, milliseconds: bool) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if abs(value) > 1e15 or not math.isfinite(value):  # 10**400 is a JSON integer too
        return None
    seconds = value / 1000 if milliseconds else value
    if not _EARLIEST <= seconds < _LATEST:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC)


def obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def text(value: object, *, limit: int = 2000) -> str:
    """A string value, or "" for anything else; NUL and lone surrogates (valid JSON escapes that
    PostgreSQL cannot store) are dropped."""
    if isinstance(value, str):
        return _UNSTORABLE.sub("", value).strip()[:limit]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return ""


def number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return float(value) if abs(value) < 1e300 else None


def driver_id(provider: str, value: str) -> str:
    """A driver's external id, namespaced by provider, at most 64 characters."""
    candidate = f"{provider}:{value}"
    if len(candidate) <= 64:
        return candidate
    return f"{provider}:{hashlib.sha256(value.encode()).hexdigest()[:40]}"


@cache
def _country_names() -> dict[str, str]:
    """Country names in every language phonenumbers knows ("United States", "Estados Unidos",
    "Brasil"...) to ISO 3166-1 alpha-2 codes. Onfleet gives names; the contract wants codes."""
    names: dict[str, str] = {}
    for code, by_language in LOCALE_DATA.items():
        for name in by_language.values():
            if name.startswith("*"):  # "*aa": the same as in language aa
                name = by_language.get(name[1:], "")
            if name:
                names.setdefault(name.casefold(), code)
    return names


def country_code(name: str) -> str:
    name = name.strip().rstrip(".")
    if alias := _COUNTRY_ALIASES.get(name.upper()) or _COUNTRY_ALIASES.get(name.upper() + "."):
        return alias
    if re.fullmatch(r"[A-Za-z]{2}", name):
        return name.upper()
    return _country_names().get(name.casefold(), "")


def _parsed_phone(phone: str) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return None


def phone_region(phone: str) -> str:
    parsed = _parsed_phone(phone) if phone else None
    return (phonenumbers.region_code_for_number(parsed) or "") if parsed else ""


def phone_timezone(phone: str) -> str:
    """The recipient's time zone when their number names exactly one (US area codes do), else ""."""
    parsed = _parsed_phone(phone) if phone else None
    if parsed is None:
        return ""
    zones = phone_timezones.time_zones_for_number(parsed)
    return zones[0] if len(zones) == 1 and zones[0] != "Etc/Unknown" else ""


def _possible_phone(phone: str, country: str) -> bool:
    try:
        parsed = phonenumbers.parse(phone, country or None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_possible_number(parsed)


def _valid_email(email: str) -> bool:
    try:
        validate_email(email)
    except ValidationError:
        return False
    return True


def upsert_data(
    *,
    reference: str,
    name: str,
    phone: str,
    email: str,
    line1: str,
    line2: str,
    city: str,
    postcode: str,
    country: str,
    lat: float | None,
    lon: float | None,
    window: tuple[datetime, datetime] | None,
) -> dict[str, Any]:
    """The `data` of a native delivery.upserted; what the provider did not give is left out, so
    that services.fill_known can keep what Porchlight knows, and the intake name the rest."""
    # A contact the intake would refuse is left out rather than losing the whole delivery:
    # the other one may be good (and the intake says so if neither is).
    phone = phone if _possible_phone(phone, country) else ""
    email = email if _valid_email(email) else ""
    customer: dict[str, Any] = {"name": name or "Customer"}
    if phone:
        customer["phone"] = phone
    if email:
        customer["email"] = email
    address: dict[str, Any] = {"line1": line1, "city": city, "postcode": postcode, "country": country}
    if line2:
        address["line2"] = line2
    if lat is not None and lon is not None:
        address["lat"], address["lon"] = lat, lon
    data: dict[str, Any] = {"reference": reference, "customer": customer, "address": address}
    if zone := phone_timezone(phone):
        data["timezone"] = zone
    if window and window[0] <= window[1]:
        data["window"] = {"start": rfc3339(window[0]), "end": rfc3339(window[1])}
    return data
