"""Sending: once, in order, never at night, never against consent, never lost."""

from __future__ import annotations

import random
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.conf import settings as django_settings
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications import rules, services
from notifications.backends import locmem
from notifications.backends import twilio as twilio_backend
from notifications.models import Consent, Notification, Preference, Status
from notifications.tasks import SHORT_WAIT
from tests.notifications.conftest import make_delivery
from tests.notifications.fakes import RecordingTwilioHttp, twilio_error

pytestmark = pytest.mark.django_db


def queue(delivery, kind="booked", **kwargs):
    """Write one message as a feature would, and return its row (the send is not run)."""
    with transaction.atomic():
        if kind in ("booked", "moved"):
            services.notifications_for_booking(delivery=delivery, moved=kind == "moved")
        else:
            services.notifications_queue(
                firings=[(delivery, rules.Firing(kind, f"{delivery.pk}:{kind}:t", kwargs))]
            )
    return Notification.objects.filter(delivery=delivery).latest("pk")


def deliver(row) -> float | None:
    return services.notification_deliver(notification_id=row.pk)


def test_a_message_is_sent_once_and_its_provider_id_kept():
    row = queue(make_delivery())
    assert deliver(row) is None
    assert deliver(row) is None  # a second task for the same id is a no-op
    row.refresh_from_db()
    assert (row.status, row.attempts, row.provider_id) == ("sent", 1, locmem.outbox[0].provider_id)
    assert len(locmem.outbox) == 1
    assert locmem.outbox[0].status_callback == f"https://porch.example/webhooks/twilio/status/?n={row.pk}"


def test_booking_and_moving_a_slot_confirm_each_slot_once():
    delivery = make_delivery()
    queue(delivery, "booked")
    queue(delivery, "booked")
    delivery.window_start += timedelta(days=1)
    delivery.window_end += timedelta(days=1)
    delivery.save()
    queue(delivery, "moved")
    assert list(Notification.objects.order_by("pk").values_list("kind", flat=True)) == ["booked", "moved"]
    assert "is now" in Notification.objects.get(kind="moved").body


def test_a_rolled_back_change_leaves_no_message_and_no_task(django_capture_on_commit_callbacks):
    delivery = make_delivery()
    with django_capture_on_commit_callbacks() as callbacks:
        for _ in range(100):
            with pytest.raises(RuntimeError), transaction.atomic():
                services.notifications_for_booking(delivery=delivery, moved=False)
                assert Notification.objects.count() == 1
                raise RuntimeError("the booking failed after the message was written")
    assert Notification.objects.count() == 0
    assert callbacks == []
    assert locmem.outbox == []


def use_twilio(monkeypatch, settings, answer):
    http = RecordingTwilioHttp(answer)
    monkeypatch.setattr(twilio_backend.SMSBackend, "http_client", http)
    settings.SMS_BACKEND = "notifications.backends.twilio.SMSBackend"
    return http


def test_a_provider_outage_backs_off_with_full_jitter_then_delivers(monkeypatch, settings):
    plan = [twilio_error(20500, 503)] * 5 + [twilio_error(20429, 429)] * 2
    http = use_twilio(
        monkeypatch, settings, lambda n: plan[n - 1] if n <= len(plan) else (201, {"sid": "SMok"})
    )
    row = queue(make_delivery())
    now = timezone.now()
    gaps = []
    with time_machine.travel(now, tick=False) as clock:
        for attempt in range(1, 9):
            delay = deliver(row)
            row.refresh_from_db()
            if delay is None:
                break
            cap = min(services.BACKOFF_CAP, services.BACKOFF_BASE * 2**attempt)
            assert 0 <= delay <= cap
            assert row.status == "queued" and row.next_attempt_at == timezone.now() + timedelta(seconds=delay)
            assert deliver(row) is None and len(http.requests) == attempt  # not due yet: no call
            gaps.append(delay)
            clock.move_to(row.next_attempt_at)
    assert row.status == "sent" and row.provider_id == "SMok"
    assert row.attempts == len(http.requests) == 8  # exactly one call per scheduled attempt
    assert len(gaps) == 7


def test_a_message_that_keeps_failing_ends_dead_and_goes_by_email(monkeypatch, settings):
    settings.NOTIFY_MAX_ATTEMPTS = 4
    http = use_twilio(monkeypatch, settings, lambda n: twilio_error(20500, 503))
    row = queue(make_delivery())
    with time_machine.travel(timezone.now(), tick=False) as clock:
        for _ in range(10):
            row.refresh_from_db()
            if row.status != "queued":
                break
            clock.move_to(row.next_attempt_at)
            deliver(row)
    row.refresh_from_db()
    assert (row.status, row.attempts, len(http.requests)) == ("dead", 4, 4)
    assert list(Notification.objects.filter(status="dead")) == [row]  # the admin's "dead" filter
    fallback = row.fallback
    assert (fallback.channel, fallback.recipient, fallback.kind) == ("email", "ana@example.com", row.kind)


def test_error_21610_is_not_retried_and_opts_the_number_out(monkeypatch, settings):
    http = use_twilio(monkeypatch, settings, lambda n: twilio_error(21610))
    delivery = make_delivery(email="")
    row = queue(delivery)
    assert deliver(row) is None
    row.refresh_from_db()
    assert (row.status, row.error_code, row.attempts, len(http.requests)) == ("failed", "21610", 1, 1)
    assert Consent.objects.get(address="+19565550123").opted_out
    assert services.notification_due_ids() == []
    assert services.channel_for(delivery) is None  # no email either: nothing more is written


def test_consent_is_checked_again_at_send_time():
    delivery = make_delivery()
    row = queue(delivery)
    services.consent_set(channel="sms", address="+19565550123", opted_out=True, reason="keyword STOP")
    deliver(row)
    row.refresh_from_db()
    assert (row.status, row.last_error) == ("skipped", "opted out")
    assert locmem.outbox == []
    assert row.fallback.channel == "email"


def test_messages_queued_together_skip_opted_out_addresses_with_one_consent_query():
    stopped = make_delivery(phone="+19565550111", email="stopped@example.com")
    texted = make_delivery(phone="+19565550122", email="texted@example.com")
    no_email = make_delivery(phone="+19565550133", email="gone@example.com")
    services.consent_set(channel="sms", address="+19565550111", opted_out=True, reason="keyword STOP")
    services.consent_set(channel="sms", address="+19565550133", opted_out=True, reason="keyword STOP")
    services.consent_set(channel="email", address="gone@example.com", opted_out=True, reason="unsubscribed")
    services.consent_set(channel="sms", address="+19565550122", opted_out=False, reason="keyword START")
    firings = [(d, rules.Firing("delivered", f"{d.pk}:delivered:t", {})) for d in (stopped, texted, no_email)]
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        services.notifications_queue(firings=firings)
    routes = {row.delivery_id: (row.channel, row.recipient) for row in Notification.objects.all()}
    assert routes == {stopped.pk: ("email", "stopped@example.com"), texted.pk: ("sms", "+19565550122")}
    consent_reads = [q["sql"] for q in queries.captured_queries if Consent._meta.db_table in q["sql"]]
    assert len(consent_reads) == 1, consent_reads


def test_a_channel_the_customer_turned_off_is_not_used():
    delivery = make_delivery()
    row = queue(delivery)
    Preference.objects.create(delivery=delivery, sms=False, email=False)
    deliver(row)
    row.refresh_from_db()
    assert row.status == "skipped" and locmem.outbox == [] and not hasattr(row, "fallback")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_ten_workers_handed_the_same_id_make_one_provider_call():
    rows = []
    for _ in range(200):
        with transaction.atomic():
            delivery = make_delivery()
            services.notifications_queue(
                firings=[(delivery, rules.Firing("booked", f"{delivery.pk}:booked"))]
            )
        rows.append(Notification.objects.get(delivery=delivery))
    errors: list[BaseException] = []
    pending = list(rows)
    lock = threading.Lock()
    barrier = threading.Barrier(10)

    def worker() -> None:
        # Each of the 10 threads takes every id in turn, all 10 at once (the barrier).
        try:
            for row in pending:
                barrier.wait()
                services.notification_deliver(notification_id=row.pk)
        except BaseException as error:
            with lock:
                errors.append(error)
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    calls = [int(m.status_callback.rsplit("=", 1)[1]) for m in locmem.outbox]
    assert sorted(calls) == sorted(row.pk for row in rows)  # exactly one provider call per id
    assert set(Notification.objects.values_list("status", flat=True)) == {"sent"}


def test_a_send_whose_worker_died_is_picked_up_after_its_lease():
    row = queue(make_delivery())
    past = timezone.now() - timedelta(seconds=1)
    Notification.objects.filter(pk=row.pk).update(
        status=Status.SENDING, attempts=1, lease_until=timezone.now() + timedelta(seconds=60)
    )
    assert services.notification_due_ids() == []  # still leased to the (dead) worker
    Notification.objects.filter(pk=row.pk).update(lease_until=past)
    assert services.notification_due_ids() == [row.pk]
    deliver(row)
    row.refresh_from_db()
    assert (row.status, row.attempts, len(locmem.outbox)) == ("sent", 2, 1)


def test_a_message_that_kills_its_worker_every_time_ends_dead(settings):
    row = queue(make_delivery(email=""))
    Notification.objects.filter(pk=row.pk).update(
        status=Status.SENDING,
        attempts=settings.NOTIFY_MAX_ATTEMPTS,
        lease_until=timezone.now() - timedelta(seconds=1),
    )
    deliver(row)
    row.refresh_from_db()
    assert row.status == "dead" and locmem.outbox == []


# --- quiet hours -----------------------------------------------------------------------------

TIMEZONES = [
    "America/Chicago",
    "America/New_York",
    "Europe/Madrid",
    "Australia/Sydney",
    "Asia/Kolkata",
    "Pacific/Auckland",
]
DST_WEEKS = [
    datetime(2026, 3, 5, tzinfo=UTC),
    datetime(2026, 3, 26, tzinfo=UTC),
    datetime(2026, 10, 22, tzinfo=UTC),
    datetime(2026, 10, 29, tzinfo=UTC),
]


def test_quiet_hours_hold_every_night_sms_until_eight_local_across_timezones_and_dst(settings):
    settings.NOTIFY_QUIET_HOURS = "21:00-08:00"
    rng = random.Random(4)
    held = 0
    for _ in range(1000):
        tz = rng.choice(TIMEZONES)
        at = rng.choice(DST_WEEKS) + timedelta(seconds=rng.uniform(0, 7 * 86400))
        local = at.astimezone(ZoneInfo(tz))
        wake = rules.quiet_until(at=at, tz_name=tz)
        night = local.hour >= 21 or local.hour < 8
        assert (wake is not None) == night, (tz, local)
        if wake:
            held += 1
            woke = wake.astimezone(ZoneInfo(tz))
            assert (woke.hour, woke.minute) == (8, 0) and wake > at
            assert wake - at <= timedelta(
                hours=11, minutes=1
            )  # never a night too many (DST nights are 10-12 h)
    assert held > 300


def test_a_night_sms_waits_in_the_database_and_is_sent_once_in_the_morning(
    settings, django_capture_on_commit_callbacks
):
    settings.NOTIFY_QUIET_HOURS = "21:00-08:00"
    chicago = ZoneInfo("America/Chicago")
    night = datetime(2026, 11, 20, 22, 30, tzinfo=chicago)
    with time_machine.travel(night, tick=False) as clock:
        delivery = make_delivery(
            window_start=night + timedelta(hours=12), window_end=night + timedelta(hours=14)
        )
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            row = queue(delivery)
        assert callbacks == []  # no Celery countdown: the wait lives in next_attempt_at
        assert row.next_attempt_at == datetime(2026, 11, 21, 8, 0, tzinfo=chicago)
        for hour in range(1, 13):  # the sweeper runs all night, and on into the day
            clock.move_to(night + timedelta(hours=hour))
            for row_id in services.notification_due_ids():
                services.notification_deliver(notification_id=row_id)
            morning = timezone.now() >= datetime(2026, 11, 21, 8, 0, tzinfo=chicago)
            assert len(locmem.outbox) == (1 if morning else 0)
    row.refresh_from_db()
    assert row.sent_at.astimezone(chicago).hour == 8


def test_a_held_message_overtaken_by_events_is_dropped(settings):
    settings.NOTIFY_QUIET_HOURS = "21:00-08:00"
    night = datetime(2026, 11, 20, 23, 0, tzinfo=ZoneInfo("America/Chicago"))
    with time_machine.travel(night, tick=False) as clock:
        delivery = make_delivery(status="out_for_delivery")
        row = queue(delivery, "out_for_delivery")
        delivery.status = "delivered"
        delivery.save()
        clock.move_to(row.next_attempt_at)
        deliver(row)
    row.refresh_from_db()
    assert (row.status, row.last_error) == ("skipped", "overtaken by events")
    assert locmem.outbox == [] and not hasattr(row, "fallback")


def test_approaching_may_break_quiet_hours(settings):
    settings.NOTIFY_QUIET_HOURS = "21:00-08:00"
    with time_machine.travel(datetime(2026, 11, 20, 22, 0, tzinfo=ZoneInfo("America/Chicago")), tick=False):
        row = queue(make_delivery(status="arriving"), "approaching")
        assert deliver(row) is None
    assert len(locmem.outbox) == 1


def test_email_is_not_held_by_quiet_hours(settings):
    settings.NOTIFY_QUIET_HOURS = "21:00-08:00"
    from django.core import mail

    with time_machine.travel(datetime(2026, 11, 20, 23, 0, tzinfo=ZoneInfo("America/Chicago")), tick=False):
        row = queue(make_delivery(phone=""))
        deliver(row)
    assert row.channel == "email" and len(mail.outbox) == 1


def test_the_day_before_reminder_is_written_once():
    chicago = ZoneInfo("America/Chicago")
    with time_machine.travel(datetime(2026, 11, 20, 9, 0, tzinfo=chicago), tick=False):
        tomorrow = make_delivery(
            window_start=datetime(2026, 11, 21, 10, 0, tzinfo=chicago),
            window_end=datetime(2026, 11, 21, 12, 0, tzinfo=chicago),
        )
        make_delivery(
            window_start=datetime(2026, 11, 22, 10, 0, tzinfo=chicago),
            window_end=datetime(2026, 11, 22, 12, 0, tzinfo=chicago),
        )
        assert services.reminders_queue() == 1
        assert services.reminders_queue() == 0
    [row] = Notification.objects.filter(kind="reminder")
    assert row.delivery == tomorrow and "tomorrow" in row.body


# --- no long waits in Celery -------------------------------------------------------------------


def test_no_celery_countdown_or_eta_reaches_the_visibility_timeout():
    root = Path(__file__).resolve().parents[2]
    visibility = django_settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    assert visibility > SHORT_WAIT
    for path in (root / "notifications").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "retry_backoff_max" not in text and not re.search(r"\beta=", text), path
        for match in re.finditer(r"countdown=(\w+)", text):
            # Every countdown is guarded by the SHORT_WAIT bound in the same function.
            assert f"{match.group(1)} <= SHORT_WAIT" in text, (path, match.group(0))


def test_a_broker_that_is_down_at_commit_fails_nothing_and_the_sweeper_sends_later(
    monkeypatch, django_capture_on_commit_callbacks
):
    from kombu.exceptions import OperationalError

    from notifications import tasks

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.notification_send, "delay", broker_down)
    delivery = make_delivery()
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        services.notifications_for_booking(delivery=delivery, moved=False)
    assert len(callbacks) == 1  # it ran, and its error did not escape
    row = Notification.objects.get()
    assert row.status == "queued" and locmem.outbox == []
    assert services.notification_due_ids() == [row.pk]  # the sweeper's next pass
    monkeypatch.undo()
    services.notifications_deliver(notification_ids=services.notification_due_ids())
    row.refresh_from_db()
    assert row.status == "sent" and len(locmem.outbox) == 1
