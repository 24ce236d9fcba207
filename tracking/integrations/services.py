"""Receiving and replaying dispatch products' webhook payloads.

A payload is mapped to native events (onfleet.py, spoke.py), then fed to the one intake,
`tracking.services.events_ingest`: idempotency, ordering, pending events and results are the
native ones. The native event ids derive from the provider's key (mapping.event_id), so a
second delivery or a replay of a payload never applies an event twice, while an event the
intake rejected (kept there without an id) is applied when a fixed mapping sends it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from tracking.integrations import onfleet, spoke
from tracking.integrations.mapping import Malformed, Mapped
from tracking.models import Delivery, PayloadOutcome, ProviderPayload
from tracking.services import events_ingest

logger = logging.getLogger(__name__)

MAPPERS: dict[str, Callable[[Any], Mapped]] = {
    onfleet.PROVIDER: onfleet.map_payload,
    spoke.PROVIDER: spoke.map_payload,
}
# Outcomes worth applying again when the provider sends the same payload again.
RETRYABLE = (PayloadOutcome.FAILED, PayloadOutcome.REJECTED)


def provider_payload_receive(*, provider: str, body: str, document: Any) -> tuple[ProviderPayload, bool]:
    """Keep an authentic payload and apply it; return it and whether it was new.

    Raises Malformed (nothing kept) when the body is not the provider's envelope. A payload
    whose key was received before is not applied again, unless it failed or was rejected then."""
    mapped, error = _map(provider, document, body)
    mapped.key = _fitting_key(mapped.key)
    with transaction.atomic():
        try:
            with transaction.atomic():
                payload = ProviderPayload.objects.create(
                    provider=provider,
                    key=mapped.key,
                    kind=mapped.kind[:64],
                    reference=mapped.reference[:200],
                    body=body,
                    outcome=PayloadOutcome.FAILED,
                    received_at=timezone.now(),
                )
            created = True
        except IntegrityError:
            payload = ProviderPayload.objects.select_for_update().get(provider=provider, key=mapped.key)
            ProviderPayload.objects.filter(pk=payload.pk).update(times_received=F("times_received") + 1)
            payload.times_received += 1
            created = False
            if payload.outcome not in RETRYABLE:
                return payload, False
            payload.body = body
        _apply(payload, mapped, error)
    logger.info(
        "%s %s: %s, %d native event(s)%s",
        provider, mapped.kind or "(unmapped)", payload.outcome, len(mapped.events),
        "" if created else " (received again)",
    )  # fmt: skip
    return payload, created


def provider_payloads_replay(*, ids: Iterable[int]) -> list[ProviderPayload]:
    """Map stored payloads again with the current code and feed them to the intake, oldest first.

    Events already applied are duplicates (their ids derive from the provider's key); events
    the intake rejected, or that an earlier mapping did not give, are applied now."""
    replayed = []
    for payload_id in sorted(ids):
        with transaction.atomic():
            payload = ProviderPayload.objects.select_for_update().filter(pk=payload_id).first()
            if payload is None:
                continue
            try:
                document = json.loads(payload.body)
                mapped, error = _map(payload.provider, document, payload.body)
            except (ValueError, Malformed) as problem:
                mapped, error = Mapped(key=payload.key, kind=payload.kind), _describe(problem)
            payload.replays += 1
            payload.replayed_at = timezone.now()
            _apply(payload, mapped, error)
        logger.info("replayed %s payload %s: %s", payload.provider, payload.pk, payload.outcome)
        replayed.append(payload)
    return replayed


def _map(provider: str, document: Any, body: str) -> tuple[Mapped, str]:
    """The mapped payload and "", or, when the mapping itself fails (a bug, not the sender's
    fault), a placeholder and the error: kept, answered 200, and replayed after the fix."""
    try:
        return MAPPERS[provider](document), ""
    except Malformed:
        raise
    except Exception as problem:  # the sender's payload is authentic: never a 500 for it
        # Only the exception's type is logged: its message may quote the payload.
        logger.error("%s mapping failed: %s", provider, type(problem).__name__)
        key = "unmapped:" + hashlib.sha256(body.encode()).hexdigest()
        return Mapped(key=key, kind=""), _describe(problem)


def _fitting_key(key: str) -> str:
    # Keys are short (ids and a time); a hostile one cannot be allowed to fail the insert.
    return key if len(key) <= 300 else "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _describe(problem: Exception) -> str:
    return f"{type(problem).__name__}: {problem}"[:2000]


def _apply(payload: ProviderPayload, mapped: Mapped, error: str) -> None:
    results: list[dict[str, Any]] = []
    if error:
        outcome = PayloadOutcome.FAILED
    elif not mapped.events:
        outcome = PayloadOutcome.IGNORED
        error = mapped.ignored
    else:
        results = events_ingest(raw_events=fill_known(events=mapped.events), source=payload.provider)
        rejected = any(r.get("result") == "rejected" for r in results)
        outcome = PayloadOutcome.REJECTED if rejected else PayloadOutcome.APPLIED
    payload.kind = mapped.kind[:64] or payload.kind
    payload.reference = mapped.reference[:200] or payload.reference
    payload.outcome, payload.results, payload.error = outcome, results, error
    payload.save()


# What a dispatch product does not know about a delivery, kept from what Porchlight knows:
# an Onfleet task has no locale, zone or item count, so its upsert must not erase those of a
# delivery the shop created through the native intake.
_CUSTOMER_KEEP = {"email": "email", "phone": "phone", "locale": "locale"}
_TOP_KEEP = {"zone": "zone_code", "items": "items", "timezone": "timezone"}


def fill_known(*, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    upserts = [e for e in events if e.get("type") == "delivery.upserted"]
    references = {e["data"].get("reference") for e in upserts}
    known = {d.reference: d for d in Delivery.objects.filter(reference__in=references)} if upserts else {}
    for event in upserts:
        data = event["data"]
        delivery = known.get(data.get("reference"))
        if delivery is not None:
            _fill_from(data, delivery)
        if "timezone" not in data and settings.INTEGRATIONS_TIMEZONE:
            data["timezone"] = settings.INTEGRATIONS_TIMEZONE
    return events


def _fill_from(data: dict[str, Any], delivery: Delivery) -> None:
    customer, address = data.setdefault("customer", {}), data.setdefault("address", {})
    for key, field in _CUSTOMER_KEEP.items():
        if key not in customer and getattr(delivery, field):
            customer[key] = getattr(delivery, field)
    for key, field in _TOP_KEEP.items():
        if key not in data and getattr(delivery, field) not in (None, ""):
            data[key] = getattr(delivery, field)
    if "line2" not in address and delivery.address_line2:
        address["line2"] = delivery.address_line2
    if address.get("postcode") in ("", spoke.NO_POSTCODE) and delivery.postcode:
        address["postcode"] = delivery.postcode
    if "window" not in data and delivery.window_start and delivery.window_end:
        data["window"] = {"start": delivery.window_start.isoformat(), "end": delivery.window_end.isoformat()}
