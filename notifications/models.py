"""Notifications: one row per message, consent per address, what providers told us."""

from __future__ import annotations

from django.db import models


class Channel(models.TextChoices):
    SMS = "sms", "SMS"
    EMAIL = "email", "email"


class Kind(models.TextChoices):
    RECEIVED = "received", "order received"
    OUT_FOR_DELIVERY = "out_for_delivery", "out for delivery"
    APPROACHING = "approaching", "approaching"
    DELAYED = "delayed", "delayed"
    DELIVERED = "delivered", "delivered"
    ATTEMPT_FAILED = "attempt_failed", "attempt failed"
    BOOKED = "booked", "slot booked"
    MOVED = "moved", "slot moved"
    REMINDER = "reminder", "day-before reminder"
    TRACKING_LINK = "tracking_link", "tracking link (sent by support)"


class Status(models.TextChoices):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"  # the provider accepted it
    DELIVERED = "delivered"  # the provider says it reached the handset or mailbox
    UNDELIVERED = "undelivered"
    FAILED = "failed"  # a permanent error: never retried
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    DEAD = "dead", "dead (gave up, see error)"
    SKIPPED = "skipped"  # no longer allowed or no longer useful at send time


PENDING_STATUSES = (Status.QUEUED, Status.SENDING)
# Where an SMS ended badly, the same message goes by email when there is an address.
SMS_FALLBACK_STATUSES = frozenset({Status.UNDELIVERED, Status.FAILED, Status.DEAD, Status.SKIPPED})


class Notification(models.Model):
    delivery = models.ForeignKey("tracking.Delivery", on_delete=models.CASCADE, related_name="notifications")
    channel = models.CharField(max_length=8, choices=Channel.choices)
    kind = models.CharField(max_length=24, choices=Kind.choices)
    language = models.CharField(max_length=8, default="en")
    recipient = models.CharField(max_length=254)
    subject = models.CharField(max_length=300, blank=True)
    body = models.TextField()
    html = models.TextField(blank=True)
    # Values the rule fixed when it fired (e.g. the ETA a delay message announced).
    context = models.JSONField(default=dict, blank=True)
    # One message per rule firing and channel: a repeated event hits this index and is dropped.
    dedupe_key = models.CharField(max_length=200, unique=True)
    fallback_of = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="fallback"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    provider_id = models.CharField(max_length=100, blank=True, db_index=True)
    error_code = models.CharField(max_length=32, blank=True)
    last_error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    # A sender holds the row until this time; past it, the sweeper may hand it out again.
    lease_until = models.DateTimeField(null=True, blank=True)
    # The Celery task that holds the lease: a redelivery of that same task (its process died
    # mid-send) may take the row back at once instead of waiting for the lease to run out.
    lease_owner = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    status_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="notification_due",
                condition=models.Q(status__in=["queued", "sending"]),
            ),
            models.Index(fields=["delivery", "kind"], name="notification_delivery_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.channel} to {self.recipient} ({self.status})"

    @property
    def is_pending(self) -> bool:
        return self.status in PENDING_STATUSES


class Consent(models.Model):
    """One record per phone number or email address: may we send to it?"""

    channel = models.CharField(max_length=8, choices=Channel.choices)
    address = models.CharField(max_length=254, help_text="E.164 number or lower-case email address")
    opted_out = models.BooleanField(default=False)
    reason = models.CharField(max_length=40, blank=True, help_text="STOP keyword, bounce, 21610, ...")
    changed_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["channel", "address"], name="consent_one_per_address")]

    def __str__(self) -> str:
        return f"{self.address}: {'opted out' if self.opted_out else 'subscribed'}"


class Preference(models.Model):
    """What the customer chose on the preferences page of one delivery."""

    delivery = models.OneToOneField(
        "tracking.Delivery", on_delete=models.CASCADE, related_name="notification_preference"
    )
    sms = models.BooleanField(default=True)
    email = models.BooleanField(default=True)
    language = models.CharField(max_length=8, blank=True, help_text="empty: the delivery's locale")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"preferences of {self.delivery_id}"


class InboundMessage(models.Model):
    """An SMS a customer sent us. Free text that is not a keyword waits for staff."""

    provider_id = models.CharField(max_length=64, blank=True)
    sender = models.CharField(max_length=40)
    body = models.TextField()
    action = models.CharField(max_length=16, help_text="opt_out, opt_in, help or review")
    needs_review = models.BooleanField(default=False)
    received_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider_id"], name="inbound_once", condition=~models.Q(provider_id="")
            )
        ]

    def __str__(self) -> str:
        return f"{self.sender}: {self.body[:40]}"


class ProviderEvent(models.Model):
    """A status callback or tracking event, kept once per provider idempotency key."""

    key = models.CharField(max_length=200, unique=True)
    notification = models.ForeignKey(
        Notification, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    provider = models.CharField(max_length=20)
    status = models.CharField(max_length=20)
    error_code = models.CharField(max_length=32, blank=True)
    payload = models.JSONField(default=dict)
    received_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.provider} {self.status} {self.key}"
