"""Spoke Dispatch's (formerly Circuit for Teams) webhooks as native events.

Spoke sends `{"type", "version", "created" (epoch ms), "data"}`; for `stop.*` types `data` is
the whole stop, whose `id` is the delivery's reference. docs/integrations.md has the mapping.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from tracking.integrations import mapping
from tracking.integrations.mapping import Malformed, Mapped, obj, text

PROVIDER = "spoke"
SIGNATURE_HEADER = "spoke-signature"
TYPES = (
    "stop.allocated",
    "stop.out_for_delivery",
    "stop.attempted_delivery",
    "stop.departed",
    "stop.next_in_route",
    "stop.tracking_link_added",
    "test.send_event",
)
# Postcodes as they appear inside a one-line address: 4 to 6 digits (with an optional
# extension: US ZIP+4, Brazil's 5+3), or the British form.
POSTCODE = re.compile(r"\b\d{4,6}(?:-\d{3,4})?\b|\b[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}\b")
STATE = re.compile(r"^[A-Z]{2,3}$")
# The contract requires a postcode; some countries have none and Spoke gives the address on one line.
NO_POSTCODE = "-"


def signature_matches(*, header: str, body: bytes, secrets: Iterable[str]) -> bool:
    """`spoke-signature`: hex HMAC-SHA256 of the raw body, keyed with the team's webhook secret."""
    try:
        candidate = bytes.fromhex(header.strip())
    except ValueError:
        return False
    matched = False
    for secret in filter(None, (s.strip() for s in secrets)):
        expected = hmac.new(secret.encode(), body, hashlib.sha256).digest()
        matched |= hmac.compare_digest(expected, candidate)
    return matched


def map_payload(document: Any) -> Mapped:
    if not isinstance(document, dict):
        raise Malformed("A Spoke webhook body is a JSON object.")
    kind = mapping.text(document.get("type"), limit=65) if isinstance(document.get("type"), str) else ""
    if not kind or len(kind) > 64:
        raise Malformed("type must be a string such as stop.allocated.")
    occurred_at = mapping.from_epoch(document.get("created"), milliseconds=True)
    if occurred_at is None:
        raise Malformed("created must be epoch milliseconds.")
    stop = obj(document.get("data"))
    stop_id = text(stop.get("id"), limit=200) if kind.startswith("stop.") else ""
    mapped = Mapped(key=f"{kind}:{stop_id}:{document['created']}", kind=kind, reference=stop_id)
    if kind == "test.send_event":
        mapped.ignored = "Spoke's test event: the webhook works"
    elif kind not in TYPES:
        mapped.ignored = f"{kind} is not a type Porchlight maps"
    elif not stop_id:
        mapped.ignored = "no stop id"
    else:
        _Builder(mapped, stop, occurred_at).build()
    return mapped


class _Builder(mapping.Builder):
    provider = PROVIDER

    def __init__(self, mapped: Mapped, stop: dict[str, Any], at: datetime) -> None:
        super().__init__(mapped, at)
        self.stop = stop
        self.info = obj(stop.get("deliveryInfo"))

    def build(self) -> None:
        kind = self.mapped.kind
        # Every stop event carries the whole stop: its details as of `created`. Spoke has no
        # "created" event, so whichever comes first creates the delivery.
        self.add("up", "delivery.upserted", self.upsert())
        if kind == "stop.allocated":
            self.status("scheduled")
        elif kind == "stop.out_for_delivery":
            self.status("out_for_delivery")
        elif kind == "stop.next_in_route":
            # The driver heads here next: no stop before this one (the live map and the
            # "approaching" message follow from stops_before, as with the native intake).
            self.status("out_for_delivery")
            self.eta(stops_before=0)
            return
        elif kind in ("stop.attempted_delivery", "stop.departed") and self.info.get("attempted") is True:
            self.attempted()
            return
        if kind != "stop.departed":
            self.eta()

    def driver(self) -> dict[str, Any] | None:
        route = obj(self.stop.get("route"))
        raw = route.get("driver")
        name = ""
        if isinstance(raw, dict):
            name = text(raw.get("name"), limit=200)
            identity = text(raw.get("id"), limit=200) or text(raw.get("email"), limit=200) or name
        else:
            identity = text(raw, limit=200) or text(self.stop.get("driverIdentifier"), limit=200)
            drivers = self.stop.get("allowedDrivers")
            if not identity and isinstance(drivers, list) and len(drivers) == 1:
                identity = text(drivers[0], limit=200)
        if not identity:
            return None
        driver: dict[str, Any] = {"id": mapping.driver_id(PROVIDER, identity)}
        if name:
            driver["name"] = name
        return driver

    def eta(self, *, stops_before: int | None = None) -> None:
        """`eta` {eta, earliestTime, latestTime} in epoch seconds: the ETA and its window."""
        eta = obj(self.stop.get("eta"))
        when = mapping.from_epoch(eta.get("eta"), milliseconds=False)
        if when is None:
            return
        data: dict[str, Any] = {"reference": self.mapped.reference, "eta": mapping.rfc3339(when)}
        start = mapping.from_epoch(eta.get("earliestTime"), milliseconds=False)
        end = mapping.from_epoch(eta.get("latestTime"), milliseconds=False)
        if start and end and start <= end:
            data["window"] = {"start": mapping.rfc3339(start), "end": mapping.rfc3339(end)}
        if stops_before is not None:
            data["stops_before"] = stops_before
        self.add("eta", "delivery.eta", data)

    def attempted(self) -> None:
        at = mapping.from_epoch(self.info.get("attemptedAt"), milliseconds=False) or self.at
        notes = text(self.info.get("driverProvidedRecipientNotes"))
        if self.info.get("succeeded") is True:
            self.status("delivered", at=at)
            self.proof(at, notes)
            return
        state = text(self.info.get("state"), limit=100)
        reason = state.removeprefix("failed_").replace("_", " ") if state.startswith("failed") else state
        self.status("attempt_failed", ": ".join(p for p in (reason, notes) if p), at=at)

    def proof(self, at: datetime, notes: str) -> None:
        """Spoke's photoUrls are kept as the proof's photo_url (the first https one), never fetched."""
        urls = self.info.get("photoUrls")
        candidates = (text(u) for u in urls) if isinstance(urls, list) else iter(())
        url = next((u for u in candidates if u.startswith("https://")), "")
        if not url:
            return  # a native proof needs a photo; the signee stays in the stored payload
        data: dict[str, Any] = {"reference": self.mapped.reference, "photo_url": url}
        if signee := text(self.info.get("signeeName"), limit=200):
            data["recipient_name"] = signee
        if notes:
            data["note"] = notes
        self.add("pf", "delivery.proof", data, at)

    def upsert(self) -> dict[str, Any]:
        recipient = obj(self.stop.get("recipient"))
        address = obj(self.stop.get("address"))
        phone = text(recipient.get("phone"), limit=40)
        line1, city, postcode, country = split_address(
            text(address.get("address"), limit=500), text(address.get("addressLineOne"), limit=300)
        )
        return mapping.upsert_data(
            reference=self.mapped.reference,
            name=text(recipient.get("name"), limit=200),
            phone=phone,
            email=text(recipient.get("email"), limit=254),
            line1=line1,
            line2="",
            city=city,
            postcode=postcode,
            country=country or mapping.phone_region(phone),
            lat=mapping.number(address.get("latitude")),
            lon=mapping.number(address.get("longitude")),
            window=None,
        )


def split_address(full: str, line_one: str) -> tuple[str, str, str, str]:
    """(line1, city, postcode, country code) from Spoke's one-line address, best effort:
    "1201 Matamoros St, Laredo, TX 78040, USA" or "Very nice St., 150 - Nice Neighbourhood,
    Campinas - SP, 130876, Brazil". What cannot be found is "" (the postcode: NO_POSTCODE)."""
    parts = [p.strip() for p in full.split(",") if p.strip()]
    line1 = line_one or (parts[0] if parts else "")
    country = mapping.country_code(parts[-1]) if len(parts) > 1 else ""
    if country:
        parts = parts[:-1]
    city, postcode = "", ""
    for index in range(len(parts) - 1, 0, -1):
        match = POSTCODE.search(parts[index])
        if match is None:
            continue
        postcode = match.group()
        rest = (parts[index][: match.start()] + parts[index][match.end() :]).strip(" -")
        if rest and not STATE.fullmatch(rest):
            city = rest  # "Berlin 10115"
        elif index > 1:
            city = parts[index - 1]
        break
    else:
        city = parts[-1] if len(parts) > 1 else ""
    city = re.sub(r"\s+-\s+[A-Z]{2,3}$", "", city)  # "Campinas - SP"
    return line1[:300], city[:200], postcode[:32] or NO_POSTCODE, country
