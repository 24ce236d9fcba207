"""Deliveries, drivers and the events the routing backend sends about them."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from django.db import models
from django.utils.translation import gettext_lazy as _


def new_tracking_token() -> str:
    # 24 random bytes: 192 bits from the OS CSPRNG, 32 URL-safe characters.
    return secrets.token_urlsafe(24)


class Status(models.TextChoices):
    CREATED = "created", _("Order received")
    SCHEDULED = "scheduled", _("Scheduled")
    OUT_FOR_DELIVERY = "out_for_delivery", _("Out for delivery")
    ARRIVING = "arriving", _("Arriving soon")
    DELIVERED = "delivered", _("Delivered")
    ATTEMPT_FAILED = "attempt_failed", _("Delivery attempt failed")
    CANCELLED = "cancelled", _("Cancelled")
    RETURNED = "returned", _("Returned to sender")


FINISHED_STATUSES = frozenset({Status.DELIVERED, Status.CANCELLED, Status.RETURNED})
ON_THE_WAY_STATUSES = frozenset({Status.OUT_FOR_DELIVERY, Status.ARRIVING})
# How long a tracking link keeps working after its delivery is finished (T3: 404 after 7 days).
TOKEN_TTL_AFTER_FINISH = timedelta(days=7)


class Driver(models.Model):
    external_id = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200, blank=True)
    vehicle = models.CharField(max_length=200, blank=True)
    # The newest position by recorded_at; a late ping never moves it back.
    lat = models.FloatField(null=True, blank=True)
    lon = models.FloatField(null=True, blank=True)
    heading = models.FloatField(null=True, blank=True)
    speed_mps = models.FloatField(null=True, blank=True)
    accuracy_m = models.FloatField(null=True, blank=True)
    position_recorded_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name or self.external_id

    @property
    def first_name(self) -> str:
        return self.name.split()[0] if self.name.strip() else ""


class LocationPing(models.Model):
    driver = models.ForeignKey(Driver, on_delete=models.CASCADE, related_name="pings")
    lat = models.FloatField()
    lon = models.FloatField()
    heading = models.FloatField(null=True, blank=True)
    speed_mps = models.FloatField(null=True, blank=True)
    accuracy_m = models.FloatField(null=True, blank=True)
    recorded_at = models.DateTimeField()
    received_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["driver", "-recorded_at"], name="ping_driver_recent"),
            models.Index(fields=["recorded_at"], name="ping_recorded_at"),
        ]

    def __str__(self) -> str:
        return f"{self.driver_id} at {self.recorded_at:%Y-%m-%d %H:%M:%S}"


class Delivery(models.Model):
    reference = models.CharField(max_length=200, unique=True)
    tracking_token = models.CharField(max_length=64, unique=True, default=new_tracking_token)

    customer_name = models.CharField(max_length=200)
    phone = models.CharField(max_length=20, blank=True, db_index=True, help_text="E.164")
    email = models.EmailField(max_length=254, blank=True, db_index=True)
    locale = models.CharField(max_length=35, default="en")

    address_line1 = models.CharField(max_length=300)
    address_line2 = models.CharField(max_length=300, blank=True)
    city = models.CharField(max_length=200)
    postcode = models.CharField(max_length=32)
    country = models.CharField(max_length=2)
    lat = models.FloatField()
    lon = models.FloatField()
    timezone = models.CharField(max_length=64, default="UTC")

    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    zone_code = models.CharField(max_length=64, blank=True, db_index=True)
    items = models.PositiveIntegerField(null=True, blank=True)
    # occurred_at of the upsert whose details are shown (last writer wins).
    details_at = models.DateTimeField()

    status = models.CharField(max_length=32, choices=Status.choices, default=Status.CREATED)
    status_reason = models.TextField(blank=True)
    status_at = models.DateTimeField(null=True, blank=True)
    driver = models.ForeignKey(
        Driver, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries"
    )

    eta = models.DateTimeField(null=True, blank=True)
    eta_window_start = models.DateTimeField(null=True, blank=True)
    eta_window_end = models.DateTimeField(null=True, blank=True)
    stops_before = models.PositiveIntegerField(null=True, blank=True)
    eta_at = models.DateTimeField(null=True, blank=True)

    # What the customer decided (sent back to the routing backend through the outbox).
    instructions = models.TextField(blank=True)
    safe_place = models.CharField(max_length=200, blank=True)

    # The customer's rating after delivery (sent back as `delivery.feedback`).
    rating = models.PositiveSmallIntegerField(null=True, blank=True)
    feedback_comment = models.TextField(blank=True)
    feedback_at = models.DateTimeField(null=True, blank=True)

    # Support can cut a leaked link; a finished delivery's link also lapses (TOKEN_TTL_AFTER_FINISH).
    token_revoked_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "deliveries"
        indexes = [
            models.Index(fields=["status", "-updated_at"], name="delivery_status_recent"),
            models.Index(fields=["driver", "status"], name="delivery_driver_status"),
        ]

    def __str__(self) -> str:
        return self.reference

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def is_on_the_way(self) -> bool:
        return self.status in ON_THE_WAY_STATUSES

    def token_is_usable(self, *, now: datetime) -> bool:
        """The tracking link works until revoked, and for a week after the delivery ended."""
        if self.token_revoked_at is not None:
            return False
        if self.is_finished and self.status_at is not None:
            return now - self.status_at <= TOKEN_TTL_AFTER_FINISH
        return True

    def shows_live_position(self, *, live_map_stops: int) -> bool:
        """The contract's privacy rule: positions only while the driver is close to this stop."""
        if self.driver_id is None or not self.is_on_the_way:
            return False
        if self.status == Status.ARRIVING:
            return True
        return self.stops_before is not None and self.stops_before <= live_map_stops


class DeliveryProof(models.Model):
    """Proof of delivery: the newest `delivery.proof` event by occurred_at."""

    delivery = models.OneToOneField(Delivery, on_delete=models.CASCADE, related_name="proof")
    recipient_name = models.CharField(max_length=200, blank=True)
    note = models.TextField(blank=True)
    photo = models.BinaryField(null=True, blank=True)
    photo_content_type = models.CharField(max_length=20, blank=True)
    photo_url = models.URLField(max_length=2000, blank=True)
    occurred_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"proof for delivery {self.delivery_id}"


class EventResult(models.TextChoices):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    STALE = "stale"
    PENDING = "pending"
    REJECTED = "rejected"


class InboundEvent(models.Model):
    """Every event the routing backend sent, with what we made of it.

    `event_id` is the sender's idempotency key. Rejected events are kept with a null
    `event_id` so that a corrected event sent again under the same id is still applied.
    """

    event_id = models.CharField(max_length=64, unique=True, null=True, blank=True)
    type = models.CharField(max_length=40, blank=True)
    occurred_at = models.DateTimeField(null=True, blank=True)
    reference = models.CharField(max_length=200, blank=True)
    delivery = models.ForeignKey(
        Delivery, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    payload = models.JSONField()
    result = models.CharField(max_length=16, choices=EventResult.choices)
    errors = models.JSONField(null=True, blank=True)
    received_at = models.DateTimeField()
    source = models.CharField(max_length=32, default="routing", help_text="which sender")

    class Meta:
        indexes = [
            models.Index(fields=["delivery", "occurred_at"], name="event_delivery_history"),
            models.Index(
                fields=["reference", "occurred_at"],
                name="event_pending_reference",
                condition=models.Q(result="pending"),
            ),
            models.Index(fields=["-received_at"], name="event_received"),
        ]

    def __str__(self) -> str:
        return f"{self.event_id or '(rejected)'} {self.type}"


class OutboundStatus(models.TextChoices):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed", "failed (needs staff)"


class OutboundEvent(models.Model):
    """What customers decided, on its way to the routing backend: the outbox."""

    event_id = models.CharField(max_length=64, unique=True)
    type = models.CharField(max_length=40)
    delivery = models.ForeignKey(
        Delivery, null=True, blank=True, on_delete=models.SET_NULL, related_name="outbound_events"
    )
    data = models.JSONField()
    occurred_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=OutboundStatus.choices, default=OutboundStatus.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    # A sender holds the row until this time; past it, the sweeper may try again.
    lease_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="outbound_due",
                condition=models.Q(status__in=["queued", "sending"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"

    def envelope(self) -> dict[str, object]:
        return {
            "id": self.event_id,
            "type": self.type,
            "occurred_at": self.occurred_at.isoformat(),
            "data": self.data,
        }


# --- provider payloads (issue #8: Onfleet and Spoke webhooks) -----------------------------


class Provider(models.TextChoices):
    ONFLEET = "onfleet", "Onfleet"
    SPOKE = "spoke", "Spoke Dispatch"


class PayloadOutcome(models.TextChoices):
    APPLIED = "applied", "applied"  # every native event it gave was accepted, duplicate, stale or pending
    REJECTED = "rejected", "rejected (some events)"  # the intake refused at least one of its events
    IGNORED = "ignored", "ignored"  # authentic, but nothing Porchlight tracks (workerDuty, test event)
    FAILED = "failed", "failed (mapping error)"  # the mapping raised: kept for a replay after the fix


class ProviderPayload(models.Model):
    """An authentic webhook body from a dispatch product, kept as received so that staff can
    replay it after a mapping fix. Never logged: providers may put account keys in them."""

    provider = models.CharField(max_length=16, choices=Provider.choices)
    # The provider's idempotency key (Onfleet: task id, trigger id and time; Spoke: type, stop
    # id and created): a second delivery of the same key is acknowledged and not applied again.
    key = models.CharField(max_length=300)
    kind = models.CharField(max_length=64, blank=True, help_text="trigger name or event type")
    reference = models.CharField(max_length=200, blank=True, help_text="the delivery's reference")
    body = models.TextField(help_text="the raw body, as received")
    outcome = models.CharField(max_length=16, choices=PayloadOutcome.choices)
    results = models.JSONField(default=list, blank=True, help_text="the intake's result per native event")
    error = models.TextField(blank=True)
    received_at = models.DateTimeField()
    times_received = models.PositiveIntegerField(default=1)
    replayed_at = models.DateTimeField(null=True, blank=True)
    replays = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["provider", "key"], name="provider_payload_key")]
        indexes = [
            models.Index(fields=["-received_at"], name="provider_payload_received"),
            models.Index(fields=["reference"], name="provider_payload_reference"),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.kind} {self.reference}".strip()


# --- support desk (issue 6): what staff did about a delivery ------------------------------


class SupportActionKind(models.TextChoices):
    NOTE = "note", _("internal note")
    CONTACT = "contact", _('"where is my order" contact')
    LINK_SENT = "link_sent", _("tracking link sent again")
    TOKEN_REISSUED = "token_reissued", _("tracking link revoked and reissued")


class SupportAction(models.Model):
    """One thing a support agent did or recorded about a delivery: who, when, what.

    Slot bookings on a customer's behalf are audited by scheduling's BookingChange (by=staff,
    staff_user), which the timeline shows beside these rows.
    """

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="support_actions")
    kind = models.CharField(max_length=24, choices=SupportActionKind.choices)
    user = models.ForeignKey(
        "auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="support_actions"
    )
    # Kept when the account is removed: the audit must still say who.
    username = models.CharField(max_length=150)
    text = models.TextField(blank=True)
    detail = models.JSONField(default=dict, blank=True)
    # The form's one-time key: a double submit or a replayed POST records (and sends) once.
    nonce = models.CharField(max_length=64, unique=True)
    at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["delivery", "at"], name="support_delivery_history"),
            models.Index(fields=["kind", "at"], name="support_kind_at"),
        ]
        permissions = [("view_support_kpis", "Can view the support KPI page")]

    def __str__(self) -> str:
        return f"{self.kind} by {self.username} at {self.at:%Y-%m-%d %H:%M}"
