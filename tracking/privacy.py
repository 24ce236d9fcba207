"""Privacy by default: retention jobs and data-subject requests (issue #7, point 5).

- `pings_purge`: driver positions older than PORCHLIGHT_RETENTION_PING_DAYS (7) are deleted.
- `deliveries_erase_finished`: the personal data of deliveries finished more than
  PORCHLIGHT_RETENTION_PERSONAL_DAYS (90) ago is erased (what is erased and what is kept for
  statistics: ERASED_DELIVERY_FIELDS and docs/operations.md).
- `stale_records_purge`: what is not tied to a delivery (rejected events, provider payloads,
  customers' SMS) is erased past the same age.
- `customer_data_export` / `customer_data_erase`: everything we hold about one phone number or
  email address (`manage.py customer_data export|erase`).

Every job works in batches (bounded memory, one short transaction per batch) and is idempotent:
it selects only rows that still hold what it erases, so a second run changes nothing.
Opt-outs (notifications.Consent with opted_out) are never erased: they are the suppression list,
kept as the plain E.164 number or lower-case address that the send-time check compares with,
so a new order to an erased number is still not texted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.db.models import Q
from django.forms.models import model_to_dict
from django.utils import timezone

from notifications.models import Consent, InboundMessage, Notification, Preference, ProviderEvent
from notifications.models import Status as NotificationStatus
from notifications.services import email_normalize, phone_normalize
from scheduling.models import Booking, BookingChange
from tracking.models import (
    FINISHED_STATUSES,
    Delivery,
    DeliveryProof,
    InboundEvent,
    LocationPing,
    OutboundEvent,
    OutboundStatus,
    ProviderPayload,
    SupportAction,
)

# Blanked on the delivery. Kept for statistics and the routing backend's records: reference,
# status and its times, window, ETA, zone, city, country, time zone, locale, items, rating and
# feedback time, driver; the destination is kept to about 1 km (two decimals).
ERASED_DELIVERY_FIELDS = (
    "customer_name",
    "phone",
    "email",
    "address_line1",
    "address_line2",
    "postcode",
    "instructions",
    "safe_place",
    "feedback_comment",
    "status_reason",
)
KEPT_COORDINATE_DECIMALS = 2
# What an erased inbound event keeps of its payload: the timeline reads data.status.
KEPT_EVENT_DATA = ("reference", "status")
# What an erased support action keeps of its detail (not the recipient a link was sent to).
KEPT_SUPPORT_DETAIL = ("channel", "notification")


def _batch_size() -> int:
    return max(1, settings.PORCHLIGHT_RETENTION_BATCH)


@dataclass
class RetentionReport:
    pings: int = 0
    deliveries: int = 0
    stale: dict[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        return self.pings + self.deliveries + sum(self.stale.values())


def retention_run(*, now: datetime | None = None) -> RetentionReport:
    """The beat job: every retention rule, with the configured ages."""
    now = now or timezone.now()
    personal_cutoff = now - timedelta(days=settings.PORCHLIGHT_RETENTION_PERSONAL_DAYS)
    return RetentionReport(
        pings=pings_purge(before=now - timedelta(days=settings.PORCHLIGHT_RETENTION_PING_DAYS)),
        deliveries=deliveries_erase_finished(before=personal_cutoff, now=now),
        stale=stale_records_purge(before=personal_cutoff),
    )


def pings_purge(*, before: datetime) -> int:
    """Delete driver positions recorded before `before`, a batch at a time."""
    deleted = 0
    while True:
        ids = list(
            LocationPing.objects.filter(recorded_at__lt=before)
            .order_by("recorded_at")
            .values_list("pk", flat=True)[: _batch_size()]
        )
        if not ids:
            return deleted
        deleted += LocationPing.objects.filter(pk__in=ids).delete()[0]


def _holds_personal_data() -> Q:
    query = Q()
    for name in ERASED_DELIVERY_FIELDS:
        query |= ~Q(**{name: ""})
    return query


def deliveries_erase_finished(*, before: datetime, now: datetime | None = None) -> int:
    """Erase the personal data of deliveries finished before `before`; returns how many."""
    erased = 0
    finished = Delivery.objects.filter(status__in=FINISHED_STATUSES, status_at__lt=before)
    while True:
        ids = list(
            finished.filter(_holds_personal_data())
            .order_by("pk")
            .values_list("pk", flat=True)[: _batch_size()]
        )
        if not ids:
            return erased
        erased += deliveries_erase(delivery_ids=ids, now=now)


def deliveries_erase(*, delivery_ids: Sequence[int], now: datetime | None = None) -> int:
    """Erase the personal data of these deliveries and everything that copies it, in one
    transaction: the delivery row, its proof, its messages (and what providers said about
    them), the events that carried it in and out, and its stored provider payloads."""
    now = now or timezone.now()
    with transaction.atomic():
        deliveries = list(Delivery.objects.select_for_update().filter(pk__in=delivery_ids))
        references = [d.reference for d in deliveries]
        for delivery in deliveries:
            for name in ERASED_DELIVERY_FIELDS:
                setattr(delivery, name, "")
            delivery.lat = round(delivery.lat, KEPT_COORDINATE_DECIMALS)
            delivery.lon = round(delivery.lon, KEPT_COORDINATE_DECIMALS)
            delivery.token_revoked_at = delivery.token_revoked_at or now
            delivery.updated_at = now
        Delivery.objects.bulk_update(
            deliveries, [*ERASED_DELIVERY_FIELDS, "lat", "lon", "token_revoked_at", "updated_at"]
        )
        DeliveryProof.objects.filter(delivery_id__in=delivery_ids).update(
            recipient_name="", note="", photo=None, photo_content_type="", photo_url=""
        )
        _erase_notifications(Notification.objects.filter(delivery_id__in=delivery_ids))
        _redact_events(InboundEvent.objects.filter(delivery_id__in=delivery_ids))
        for outbound in OutboundEvent.objects.filter(delivery_id__in=delivery_ids).exclude(
            status__in=(OutboundStatus.QUEUED, OutboundStatus.SENDING)
        ):
            outbound.data = {"reference": outbound.data.get("reference", ""), "erased": True}
            outbound.save(update_fields=["data"])
        ProviderPayload.objects.filter(reference__in=references).exclude(body="").update(body="", error="")
        # Support's notes and contacts may quote the customer; who did what, and when, stays.
        for action in SupportAction.objects.filter(delivery_id__in=delivery_ids).exclude(text="", detail={}):
            action.text = ""
            action.detail = {key: value for key, value in action.detail.items() if key in KEPT_SUPPORT_DETAIL}
            action.save(update_fields=["text", "detail"])
    return len(deliveries)


def _erase_notifications(notifications: models.QuerySet[Notification]) -> None:
    ids = list(notifications.values_list("pk", flat=True))
    # A message still waiting 90 days after its delivery ended will never be useful.
    Notification.objects.filter(
        pk__in=ids, status__in=(NotificationStatus.QUEUED, NotificationStatus.SENDING)
    ).update(status=NotificationStatus.SKIPPED, lease_until=None)
    Notification.objects.filter(pk__in=ids).update(
        recipient="", subject="", body="", html="", context={}, last_error=""
    )
    ProviderEvent.objects.filter(notification_id__in=ids).update(payload={})


def _redact_events(events: models.QuerySet[InboundEvent]) -> None:
    changed = []
    for event in events.only("pk", "payload", "errors"):
        payload: dict[str, Any] = event.payload if isinstance(event.payload, dict) else {}
        raw_data = payload.get("data")
        data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        kept: dict[str, Any] = {
            **{key: payload[key] for key in ("id", "type", "occurred_at") if key in payload},
            "data": {key: data[key] for key in KEPT_EVENT_DATA if key in data},
        }
        if kept != event.payload or event.errors is not None:
            event.payload, event.errors = kept, None
            changed.append(event)
    InboundEvent.objects.bulk_update(changed, ["payload", "errors"], batch_size=_batch_size())


def stale_records_purge(*, before: datetime) -> dict[str, int]:
    """Erase, past the personal-data age, what is tied to no delivery: events that were
    rejected or never matched one, stored provider payloads, and the SMS customers sent us."""
    counts = {"inbound_events": 0, "provider_payloads": 0, "inbound_messages": 0}
    batch = _batch_size()
    while True:
        ids = list(
            InboundEvent.objects.filter(delivery__isnull=True, received_at__lt=before)
            .exclude(payload={})
            .values_list("pk", flat=True)[:batch]
        )
        if not ids:
            break
        counts["inbound_events"] += InboundEvent.objects.filter(pk__in=ids).update(payload={}, errors=None)
    while True:
        ids = list(
            ProviderPayload.objects.filter(received_at__lt=before)
            .exclude(body="")
            .values_list("pk", flat=True)[:batch]
        )
        if not ids:
            break
        counts["provider_payloads"] += ProviderPayload.objects.filter(pk__in=ids).update(body="", error="")
    while True:
        ids = list(InboundMessage.objects.filter(received_at__lt=before).values_list("pk", flat=True)[:batch])
        if not ids:
            break
        counts["inbound_messages"] += InboundMessage.objects.filter(pk__in=ids).delete()[0]
    return counts


# --- data-subject requests --------------------------------------------------------------------
class SubjectError(ValueError):
    """The phone number or email address given cannot identify anyone."""


@dataclass(frozen=True)
class Subject:
    phone: str = ""
    email: str = ""

    def deliveries(self) -> models.QuerySet[Delivery]:
        query = Q(pk__in=[])
        if self.phone:
            query |= Q(phone=self.phone)
        if self.email:
            query |= Q(email__iexact=self.email)
        return Delivery.objects.filter(query)

    def addresses(self) -> list[str]:
        return [address for address in (self.phone, self.email) if address]


def subject_for(*, phone: str = "", email: str = "") -> Subject:
    """Normalise as the rest of the code does (E.164 with phonenumbers; lower-case email)."""
    subject = Subject(
        phone=phone_normalize(phone) if phone else "", email=email_normalize(email) if email else ""
    )
    if phone and not subject.phone:
        raise SubjectError(
            f"not a possible phone number: {phone[:40]!r} (give it in international form, +1...)"
        )
    if email and "@" not in subject.email:
        raise SubjectError(f"not an email address: {email[:80]!r}")
    if not subject.addresses():
        raise SubjectError("give --phone or --email")
    return subject


def _row(instance: models.Model, *, exclude: Iterable[str] = ()) -> dict[str, Any]:
    values = model_to_dict(instance, exclude=list(exclude))
    for model_field in instance._meta.concrete_fields:
        # model_to_dict leaves out non-editable fields (created_at...); a subject gets all.
        if model_field.name not in values and model_field.name not in exclude:
            values[model_field.name] = model_field.value_from_object(instance)
    return values


def customer_data_export(*, subject: Subject) -> dict[str, Any]:
    """Everything we hold about this person, as JSON-ready data."""
    deliveries = list(subject.deliveries().order_by("pk"))
    ids = [d.pk for d in deliveries]
    notifications = Notification.objects.filter(
        Q(delivery_id__in=ids) | Q(recipient__in=subject.addresses())
    ).order_by("pk")
    export: dict[str, Any] = {
        "subject": {"phone": subject.phone, "email": subject.email},
        "exported_at": timezone.now(),
        "deliveries": [],
        "notifications": [_row(n) for n in notifications],
        "provider_events": [
            _row(e) for e in ProviderEvent.objects.filter(notification__in=notifications).order_by("pk")
        ],
        "consent": [_row(c) for c in Consent.objects.filter(address__in=subject.addresses()).order_by("pk")],
        "inbound_messages": [_row(m) for m in _messages_from(subject).order_by("pk")],
        "provider_payloads": [
            _row(p)
            for p in ProviderPayload.objects.filter(reference__in=[d.reference for d in deliveries]).order_by(
                "pk"
            )
        ],
    }
    for delivery in deliveries:
        proof = DeliveryProof.objects.filter(delivery=delivery).first()
        booking = Booking.objects.filter(delivery=delivery).select_related("slot").first()
        export["deliveries"].append(
            {
                **_row(delivery),
                "proof": None
                if proof is None
                else {
                    **_row(proof, exclude=["photo"]),
                    "photo_bytes": len(proof.photo) if proof.photo else 0,
                },
                "preference": [_row(p) for p in Preference.objects.filter(delivery=delivery)],
                "booking": None
                if booking is None
                else {
                    **_row(booking),
                    "slot_start": booking.slot.start if booking.slot else None,
                    "slot_end": booking.slot.end if booking.slot else None,
                    "history": [
                        _row(c) for c in BookingChange.objects.filter(booking=booking).order_by("pk")
                    ],
                },
                "inbound_events": [
                    _row(e) for e in InboundEvent.objects.filter(delivery=delivery).order_by("pk")
                ],
                "outbound_events": [
                    _row(e) for e in OutboundEvent.objects.filter(delivery=delivery).order_by("pk")
                ],
                "support_actions": [
                    _row(a, exclude=["nonce"])
                    for a in SupportAction.objects.filter(delivery=delivery).order_by("pk")
                ],
            }
        )
    # Through JSON once, so that the caller gets plain data (datetimes as ISO text).
    return json.loads(json.dumps(export, cls=DjangoJSONEncoder))  # type: ignore[no-any-return]


def _messages_from(subject: Subject) -> models.QuerySet[InboundMessage]:
    if not subject.phone:
        return InboundMessage.objects.none()
    return InboundMessage.objects.filter(sender=subject.phone)


@dataclass
class ErasureReport:
    deliveries: int
    notifications: int
    inbound_messages: int
    consent_removed: int
    opt_outs_kept: int


def customer_data_erase(*, subject: Subject) -> ErasureReport:
    """Erase this person's data as retention would, whatever the delivery's age, plus the
    messages sent to their address from any delivery and the SMS they sent us. Opt-outs are
    kept (the suppression list); a consent that only said "yes" is removed."""
    addresses = subject.addresses()
    ids = list(subject.deliveries().values_list("pk", flat=True))
    erased = 0
    for start in range(0, len(ids), _batch_size()):
        erased += deliveries_erase(delivery_ids=ids[start : start + _batch_size()])
    with transaction.atomic():
        others = Notification.objects.filter(recipient__in=addresses)
        notifications = others.count()
        _erase_notifications(others)
        messages = _messages_from(subject).delete()[0]
        consent_removed = Consent.objects.filter(address__in=addresses, opted_out=False).delete()[0]
        kept = Consent.objects.filter(address__in=addresses, opted_out=True).count()
    return ErasureReport(
        deliveries=erased,
        notifications=notifications,
        inbound_messages=messages,
        consent_removed=consent_removed,
        opt_outs_kept=kept,
    )
