"""Customer notifications: which changes call for a message, sending it, and what providers
and customers tell us back.

A message is a row first (written in the caller's transaction, one per rule firing and
channel thanks to its unique dedupe key), then a Celery task sends it. Sending locks the row
and checks its state, consent, usefulness and quiet hours again, so that any number of
workers handed the same id make one provider call. Long waits (quiet hours, backoff) are
`next_attempt_at` in the database, which a beat sweeper reads.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import phonenumbers
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q, Subquery
from django.utils import timezone

from notifications import render, rules
from notifications.models import (
    PENDING_STATUSES,
    SMS_FALLBACK_STATUSES,
    Channel,
    Consent,
    Kind,
    Notification,
    Preference,
    Status,
)
from notifications.transports import Transport, TransportError, transport_for
from tracking import background, sql

if TYPE_CHECKING:
    from tracking.models import Delivery
    from tracking.services import Change

logger = logging.getLogger(__name__)

BACKOFF_BASE = 2.0
BACKOFF_CAP = 600.0


# --- writing messages ----------------------------------------------------------------------


def notifications_for_changes(*, changes: Sequence[Change]) -> None:
    """Write the notification rows that `changes` call for, in the caller's transaction.

    Called by the intake inside the transaction that applied the events, so that a message
    exists if and only if its cause was committed.
    """
    last_delay: dict[int, datetime | None] = {}
    firings: list[tuple[Delivery, rules.Firing]] = []
    for change in changes:
        pk = change.delivery.pk
        # The last delay message matters only to an ETA that is late at all: most are not,
        # and they cost no query.
        late = change.kind == "eta" and rules.is_delayed(change.delivery, last_delay_eta=None)
        if late and pk not in last_delay:
            last_delay[pk] = _last_delay_eta(pk)
        for firing in rules.firings_for_change(change, last_delay_eta=last_delay.get(pk)):
            if firing.kind == Kind.DELAYED:
                last_delay[pk] = datetime.fromisoformat(firing.context["eta"])
            firings.append((change.delivery, firing))
    notifications_queue(firings=firings)


def notifications_for_booking(*, delivery: Delivery, moved: bool) -> None:
    """Write the slot-booked (or moved) confirmation, in the booking's transaction.

    `delivery.window_start`/`window_end` already hold the booked slot.
    """
    notifications_queue(firings=[(delivery, rules.firing_for_booking(delivery=delivery, moved=moved))])


def _last_delay_eta(delivery_id: int) -> datetime | None:
    context = (
        Notification.objects.filter(delivery_id=delivery_id, kind=Kind.DELAYED)
        .order_by("-created_at", "-pk")
        .values_list("context", flat=True)
        .first()
    )
    return datetime.fromisoformat(context["eta"]) if context and context.get("eta") else None


def notifications_queue(*, firings: Iterable[tuple[Delivery, rules.Firing]]) -> list[int]:
    """One row per firing on the customer's channel; a key already written is left alone."""
    now = timezone.now()
    rows: dict[str, Notification] = {}
    firings = list(firings)
    opted_out = opted_out_among(deliveries=[delivery for delivery, _ in firings])
    for delivery, firing in firings:
        route = channel_for(delivery, opted_out=opted_out)
        if route is None:
            logger.info("no channel for %s of delivery %s", firing.kind, delivery.pk)
            continue
        key = f"{firing.key}:{route[0]}"
        if key not in rows:
            rows[key] = _new_row(delivery, firing.kind, route, key, firing.context, now=now)
    if not rows:
        return []
    # One statement: rows whose key is already written are skipped by the unique index (a
    # concurrent writer of the same key is waited for), and the ids of those that went in
    # come back, so that only they are handed to a sender.
    fields = [field for field in Notification._meta.concrete_fields if not field.primary_key]
    inserted = sql.insert_rows(
        Notification,
        [field.name for field in fields],
        [[field.pre_save(row, True) for field in fields] for row in rows.values()],
        conflict="dedupe_key",
        returning=("id", "dedupe_key"),
    )
    due = sorted(pk for pk, key in inserted if rows[key].next_attempt_at <= now)
    _send_after_commit(due)
    return due


def _new_row(
    delivery: Delivery, kind: str, route: tuple[str, str], key: str, context: dict[str, Any], *, now: datetime
) -> Notification:
    channel, recipient = route
    language = render.language_for(delivery)
    text = render.render(delivery, kind=kind, channel=channel, language=language, extra=context)
    wake = _quiet_until(kind, channel, delivery, now)
    if wake:
        # Said out loud so that the demo (console backends) shows why a text did not go yet.
        logger.info("%s SMS to %s held by quiet hours until %s", kind, recipient, wake.isoformat())
    return Notification(
        delivery=delivery, channel=channel, kind=kind, language=language, recipient=recipient,
        subject=text.subject, body=text.body, html=text.html, context=context, dedupe_key=key,
        next_attempt_at=wake or now,
    )  # fmt: skip


SEND_CHUNK = 20


def _send_after_commit(ids: list[int]) -> None:
    """One task per chunk of messages: a worker claims and records a chunk in one statement
    each, where one task per message would spend most of its time on round trips."""
    for start in range(0, len(ids), SEND_CHUNK):
        # Off the request path: a stalled broker must not hold the request (tracking.background).
        chunk = ids[start : start + SEND_CHUNK]
        transaction.on_commit(partial(background.run_soon, partial(_publish, chunk)))


def _publish(ids: list[int]) -> None:
    # delay_on_commit, except that a broker that is down must not fail the request whose
    # change is already committed: the rows are queued in the database, the sweeper finds them.
    from notifications.tasks import notification_send

    try:
        notification_send.delay(ids)
    except Exception:
        logger.warning("could not queue the send of notifications %s; the sweeper will", ids, exc_info=True)


def _quiet_until(kind: str, channel: str, delivery: Delivery, at: datetime) -> datetime | None:
    if channel != Channel.SMS or rules.may_break_quiet_hours(kind):
        return None
    return rules.quiet_until(at=at, tz_name=delivery.timezone)


def channel_for(
    delivery: Delivery, *, exclude: str = "", opted_out: set[tuple[str, str]] | None = None
) -> tuple[str, str] | None:
    """SMS where there is a number the customer lets us text, else email, else nothing.
    `opted_out`: the (channel, address) pairs opted out among these deliveries' addresses
    (opted_out_among), read once for many; without it, each address is looked up."""

    def allowed(channel: str, address: str) -> bool:
        if opted_out is not None:
            return (channel, address) not in opted_out
        return not is_opted_out(channel=channel, address=address)

    # Through the relation, so render.language_for reuses the same (cached) row.
    preference = getattr(delivery, "notification_preference", None)
    phone = phone_normalize(delivery.phone)
    sms_wanted = exclude != Channel.SMS and (preference is None or preference.sms)
    if sms_wanted and phone and allowed(Channel.SMS, phone):
        return (Channel.SMS, phone)
    email = email_normalize(delivery.email)
    email_wanted = exclude != Channel.EMAIL and (preference is None or preference.email)
    if email_wanted and email and allowed(Channel.EMAIL, email):
        return (Channel.EMAIL, email)
    return None


def opted_out_among(*, deliveries: Iterable[Delivery]) -> set[tuple[str, str]]:
    """The (channel, address) pairs of these deliveries' phones and emails that opted out: one
    query for a whole batch, instead of one for each message."""
    addresses = set()
    for delivery in deliveries:
        if phone := phone_normalize(delivery.phone):
            addresses.add((Channel.SMS, phone))
        if email := email_normalize(delivery.email):
            addresses.add((Channel.EMAIL, email))
    if not addresses:
        return set()
    found = Consent.objects.filter(opted_out=True, address__in={address for _, address in addresses})
    return set(found.values_list("channel", "address")) & addresses


# --- sending -------------------------------------------------------------------------------


def backoff_delay(attempts: int) -> float:
    """Full jitter: uniform between 0 and the capped exponential."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(attempts, 20)))


def notification_deliver(*, notification_id: int) -> float | None:
    """Try to send one message. Returns the seconds until the next try, or None."""
    return notifications_deliver(notification_ids=[notification_id]).get(notification_id)


def notifications_deliver(*, notification_ids: Sequence[int], owner: str = "") -> dict[int, float]:
    """Try to send each message that is due; returns {id: seconds until its next try} for
    those that failed and will be tried again.

    `owner` names the try (the Celery task id). A redelivered task finds rows it already holds:
    its process died mid-chunk, so it takes them back at once, one message at a time, so that
    a message that kills its sender is charged its own attempts and not its neighbours'.
    """
    if owner and _held_by(notification_ids, owner):
        batches = [[pk] for pk in sorted(notification_ids)]
    else:
        batches = [list(notification_ids)]
    retries: dict[int, float] = {}
    transports: dict[str, Transport] = {}
    for batch in batches:
        _send_claimed(_claim(batch, owner=owner), transports, retries)
    return retries


def _held_by(notification_ids: Sequence[int], owner: str) -> bool:
    return Notification.objects.filter(
        pk__in=list(notification_ids), status=Status.SENDING, lease_owner=owner
    ).exists()


def _send_claimed(
    rows: list[Notification], transports: dict[str, Transport], retries: dict[int, float]
) -> None:
    for row in rows:
        try:
            transport = transports.get(row.channel) or transports.setdefault(
                row.channel, transport_for(row.channel)
            )
            provider_id = transport.send(row)
        except TransportError as error:
            delay = _failed(row, error)
            if delay is not None:
                retries[row.pk] = delay
            continue
        _record_sent(row.pk, provider_id)


def _record_sent(notification_id: int, provider_id: str) -> None:
    """Recorded at once, message by message: a worker killed halfway through a chunk leaves
    only the message it was sending in doubt, not those it had sent."""
    stamp = connection.ops.adapt_datetimefield_value(timezone.now())
    params = [stamp, provider_id, stamp, notification_id]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # One round trip, without waiting for the WAL flush (a fsync per message was most of
            # a send's time): the two statements run as one implicit transaction. A worker killed
            # after this loses nothing; only a crash of PostgreSQL itself within the flush delay
            # (a fraction of a second) could forget it, and the message would then be sent again
            # once: the same doubt as a kill between the provider's accept and this line.
            cursor.execute("SET LOCAL synchronous_commit TO OFF;" + _RECORD_SENT_SQL, params)
        else:
            cursor.execute(_RECORD_SENT_SQL, params)


# A status callback may have landed first ("delivered"): the status moves on only from "sending".
_RECORD_SENT_SQL = """
    UPDATE notifications_notification
    SET status_at = CASE WHEN status = 'sending' THEN %s ELSE status_at END,
        status = CASE WHEN status = 'sending' THEN 'sent' ELSE status END,
        provider_id = %s, sent_at = %s, lease_until = NULL, error_code = '', last_error = ''
    WHERE id = %s
"""


def _claim(notification_ids: Sequence[int], *, owner: str = "") -> list[Notification]:
    """Take the rows that are due and still wanted for one try, under a lease; commit before
    the network calls. Rows another worker holds are skipped, not waited for. The attempt is
    counted here, before the provider call, so that a send that kills its process still counts."""
    now = timezone.now()
    opted_out = Consent.objects.filter(
        channel=OuterRef("channel"), address=OuterRef("recipient"), opted_out=True
    )
    preference = Preference.objects.filter(delivery_id=OuterRef("delivery_id"))
    with transaction.atomic():
        candidates = (
            Notification.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("delivery")
            .filter(pk__in=list(notification_ids), status__in=PENDING_STATUSES, next_attempt_at__lte=now)
            .annotate(
                is_opted_out=Exists(opted_out),
                sms_wanted=Subquery(preference.values("sms")[:1]),
                email_wanted=Subquery(preference.values("email")[:1]),
            )
            .order_by("pk")
        )
        claimed: list[Notification] = [row for row in candidates if _take(row, now, owner=owner)]
        lease = now + timedelta(seconds=settings.NOTIFY_LEASE_SECONDS)
        if claimed:
            Notification.objects.filter(pk__in=[row.pk for row in claimed]).update(
                status=Status.SENDING, attempts=F("attempts") + 1, lease_until=lease, lease_owner=owner
            )
        for row in claimed:
            row.status, row.attempts, row.lease_until = Status.SENDING, row.attempts + 1, lease
            row.lease_owner = owner
    return claimed


def _take(row: Any, now: datetime, *, owner: str = "") -> bool:
    """Whether this try of a locked, due row should go to the provider; if not, why, on the row."""
    held = row.status == Status.SENDING and row.lease_until and row.lease_until > now
    if held and not (owner and row.lease_owner == owner):
        return False  # another worker is sending it right now
    if row.attempts >= settings.NOTIFY_MAX_ATTEMPTS:
        # Tries that never came back (a worker killed mid-send each time: a poison message)
        # end here, and staff are told: the ERROR line, and the admin's "dead" list.
        logger.error(
            "notification %s is dead: no result after %s attempts (its sender died each time)",
            row.pk,
            row.attempts,
        )
        _finish(row, Status.DEAD, error="no result after the last attempt", now=now)
        return False
    # Consent and the customer's choices, checked again at send time.
    if row.is_opted_out:
        _finish(row, Status.SKIPPED, error="opted out", now=now)
        return False
    if {"sms": row.sms_wanted, "email": row.email_wanted}.get(row.channel) is False:
        _finish(row, Status.SKIPPED, error=f"{row.channel} turned off by the customer", now=now)
        return False
    if not rules.is_still_useful(row.kind, row.delivery):
        _finish(row, Status.SKIPPED, error="overtaken by events", now=now, fallback=False)
        return False
    wake = _quiet_until(row.kind, row.channel, row.delivery, now)
    if wake:
        row.next_attempt_at, row.status, row.lease_until = wake, Status.QUEUED, None
        row.save(update_fields=["next_attempt_at", "status", "lease_until"])
        return False
    if row.created_at < now - timedelta(seconds=60):
        # Held back for a while: say what is true now (ETA, window), not what was then.
        text = render.render(
            row.delivery, kind=row.kind, channel=row.channel, language=row.language, extra=row.context
        )
        row.subject, row.body, row.html = text.subject, text.body, text.html
        row.save(update_fields=["subject", "body", "html"])
    return True


def _failed(row: Notification, error: TransportError) -> float | None:
    now = timezone.now()
    message = str(error)[:1000]
    with transaction.atomic():
        row = Notification.objects.select_for_update(of=("self",)).select_related("delivery").get(pk=row.pk)
        if row.status != Status.SENDING:
            return None
        if error.code == "21610":
            consent_set(channel=Channel.SMS, address=row.recipient, opted_out=True, reason="21610")
        if not error.retry:
            _finish(row, Status.FAILED, error=message, code=error.code, now=now)
            return None
        if row.attempts >= settings.NOTIFY_MAX_ATTEMPTS:
            logger.error("notification %s is dead after %s attempts: %s", row.pk, row.attempts, message)
            _finish(row, Status.DEAD, error=message, code=error.code, now=now)
            return None
        delay = backoff_delay(row.attempts)
        row.status, row.lease_until, row.error_code, row.last_error = Status.QUEUED, None, error.code, message
        row.next_attempt_at = now + timedelta(seconds=delay)
        row.save(update_fields=["status", "lease_until", "error_code", "last_error", "next_attempt_at"])
    return delay


def _finish(
    row: Notification, status: str, *, error: str, now: datetime, code: str = "", fallback: bool = True
) -> None:
    row.status, row.status_at, row.lease_until, row.last_error = status, now, None, error
    row.error_code = code or row.error_code
    row.save(update_fields=["status", "status_at", "lease_until", "last_error", "error_code"])
    if fallback and row.channel == Channel.SMS and status in SMS_FALLBACK_STATUSES:
        _email_fallback(row)


def _email_fallback(row: Notification) -> None:
    """The same message by email, where the SMS did not get through and there is an address."""
    delivery = row.delivery
    route = channel_for(delivery, exclude=Channel.SMS)
    if route is None or not rules.is_still_useful(row.kind, delivery):
        return
    key = row.dedupe_key.removesuffix(":sms") + ":email"
    try:
        with transaction.atomic():
            fallback = _new_row(delivery, row.kind, route, key, row.context, now=timezone.now())
            fallback.fallback_of = row
            fallback.save()
    except IntegrityError:
        return  # this message already went (or goes) by email
    _send_after_commit([fallback.pk])


def notification_due_ids(*, limit: int = 1000) -> list[int]:
    """Rows the sweeper should hand to a worker: due, or whose sender's lease ran out."""
    now = timezone.now()
    due = Q(status=Status.QUEUED) | Q(status=Status.SENDING, lease_until__lt=now)
    return list(
        Notification.objects.filter(due, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )


def notification_overdue(*, now: datetime | None = None) -> tuple[int, float]:
    """Messages that should be with a worker (due, or whose sender's lease ran out), and how
    long the oldest of them has been waiting, in seconds: 0.0 when there are none."""
    now = now or timezone.now()
    queued = Notification.objects.filter(status=Status.QUEUED, next_attempt_at__lte=now)
    abandoned = Notification.objects.filter(status=Status.SENDING, lease_until__lt=now)
    count = queued.count() + abandoned.count()
    since = [
        value
        for value in (
            queued.order_by("next_attempt_at").values_list("next_attempt_at", flat=True).first(),
            abandoned.order_by("lease_until").values_list("lease_until", flat=True).first(),
        )
        if value is not None
    ]
    return count, max(0.0, (now - min(since)).total_seconds()) if since else 0.0


def reminders_queue(*, now: datetime | None = None) -> int:
    """The day-before reminder for deliveries whose window starts tomorrow, local time."""
    from tracking.models import Delivery

    now = now or timezone.now()
    candidates = Delivery.objects.filter(
        window_start__gte=now, window_start__lt=now + timedelta(hours=48), status__in=("created", "scheduled")
    )
    firings = []
    for delivery in candidates:
        assert delivery.window_start is not None
        today = rules.local_date(now, delivery.timezone)
        if rules.local_date(delivery.window_start, delivery.timezone) == today + timedelta(days=1):
            firings.append((delivery, rules.firing_for_reminder(delivery=delivery)))
    with transaction.atomic():
        return len(notifications_queue(firings=firings))


# --- consent -------------------------------------------------------------------------------


def phone_normalize(raw: str) -> str:
    """E.164, or "" where the text is not a possible phone number."""
    raw = (raw or "").strip()
    if not raw or len(raw) > 40:
        return ""
    try:
        number = phonenumbers.parse(raw if raw.startswith("+") else f"+{raw.lstrip('0')}", None)
    except phonenumbers.NumberParseException:
        return ""
    if not phonenumbers.is_possible_number(number):
        return ""
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def email_normalize(raw: str) -> str:
    return (raw or "").strip().lower()


def is_opted_out(*, channel: str, address: str) -> bool:
    return Consent.objects.filter(channel=channel, address=address, opted_out=True).exists()


def consent_set(*, channel: str, address: str, opted_out: bool, reason: str) -> Consent:
    consent, _ = Consent.objects.update_or_create(
        channel=channel,
        address=address,
        defaults={"opted_out": opted_out, "reason": reason[:40], "changed_at": timezone.now()},
    )
    return consent


def preference_update(*, delivery: Delivery, sms: bool, email: bool, language: str) -> Preference:
    """The customer's choices for one delivery; queued messages follow them at send time."""
    preference, _ = Preference.objects.update_or_create(
        delivery=delivery, defaults={"sms": sms, "email": email, "language": language}
    )
    return preference
