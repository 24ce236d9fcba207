"""Which changes send which message, once: through the real intake."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from notifications.backends import locmem
from notifications.models import Notification
from notifications.services import notification_deliver, notification_due_ids
from tests.notifications.conftest import eta, status, upsert

pytestmark = pytest.mark.django_db


@pytest.fixture
def send_now(django_capture_on_commit_callbacks):
    """Post, then send what is due as the queued tasks would (both passes: no broker involved)."""

    def run(post_events, body):
        with django_capture_on_commit_callbacks(execute=False):
            response = post_events(body)
        assert response.status_code == 200, response.content
        for notification_id in notification_due_ids():
            notification_deliver(notification_id=notification_id)
        return response.json()["results"]

    return run


def kinds(ref: str) -> list[str]:
    return list(
        Notification.objects.filter(delivery__reference=ref).order_by("pk").values_list("kind", flat=True)
    )


def test_a_new_order_gets_one_received_text_with_its_tracking_link(post_events, send_now):
    now = timezone.now()
    send_now(post_events, upsert("R1", at=now))
    [row] = Notification.objects.all()
    assert (row.kind, row.channel, row.status) == ("received", "sms", "sent")
    assert row.body.startswith("Hi Ana, we've got your order")
    assert f"https://porch.example/t/{row.delivery.tracking_token}/" in locmem.outbox[0].body


def test_a_customer_with_only_an_email_gets_an_email_with_text_and_html(post_events, send_now):
    from django.core import mail

    send_now(post_events, upsert("R2", at=timezone.now(), phone=None, email="Only@Example.com"))
    [row] = Notification.objects.all()
    assert (row.channel, row.recipient) == ("email", "only@example.com")
    [message] = mail.outbox
    assert message.alternatives[0][1] == "text/html" and "<p>" in message.alternatives[0][0]
    assert not locmem.outbox


def test_the_same_out_for_delivery_event_posted_many_times_sends_one_message(post_events, send_now):
    now = timezone.now()
    send_now(post_events, upsert("W1", at=now))
    event = status("W1", "out_for_delivery", at=now + timedelta(minutes=1), event_id="storm-1")
    for _ in range(50):
        send_now(post_events, event)
    assert kinds("W1") == ["received", "out_for_delivery"]
    assert len(locmem.outbox) == 2
    assert "out for delivery" in locmem.outbox[1].body


def test_two_out_for_delivery_events_the_same_day_send_one_message(post_events, send_now):
    now = timezone.now()
    send_now(
        post_events,
        {"events": [upsert("W2", at=now), status("W2", "out_for_delivery", at=now + timedelta(minutes=1))]},
    )
    send_now(post_events, status("W2", "arriving", at=now + timedelta(minutes=2)))
    send_now(post_events, status("W2", "out_for_delivery", at=now + timedelta(minutes=3)))
    assert kinds("W2") == ["received", "out_for_delivery", "approaching"]


def test_approaching_fires_the_first_time_the_driver_is_two_stops_away_and_only_once(post_events, send_now):
    now = timezone.now()
    send_now(post_events, {"events": [upsert("A1", at=now), status("A1", "out_for_delivery", at=now)]})
    base = now + timedelta(hours=1)
    send_now(post_events, eta("A1", base, at=now + timedelta(seconds=1), stops_before=5))
    assert kinds("A1") == ["received", "out_for_delivery"]
    send_now(post_events, eta("A1", base, at=now + timedelta(seconds=2), stops_before=2))
    send_now(post_events, eta("A1", base, at=now + timedelta(seconds=3), stops_before=1))
    send_now(post_events, status("A1", "arriving", at=now + timedelta(seconds=4)))
    assert kinds("A1") == ["received", "out_for_delivery", "approaching"]


def test_approaching_fires_when_the_eta_is_ten_minutes_away(post_events, send_now):
    now = timezone.now()
    send_now(post_events, {"events": [upsert("A2", at=now), status("A2", "out_for_delivery", at=now)]})
    send_now(post_events, eta("A2", now + timedelta(minutes=11), at=now, stops_before=4))
    assert "approaching" not in kinds("A2")
    send_now(post_events, eta("A2", now + timedelta(minutes=10), at=now + timedelta(seconds=1)))
    assert kinds("A2")[-1] == "approaching"


def test_a_delay_is_told_at_15_minutes_past_the_window_and_again_only_after_30_more(post_events, send_now):
    now = timezone.now()
    end = now + timedelta(hours=2)
    send_now(
        post_events,
        {
            "events": [
                upsert("D1", at=now, window=(now + timedelta(hours=1), end)),
                status("D1", "out_for_delivery", at=now),
            ]
        },
    )
    step = iter(range(1, 100))

    def new_eta(minutes_late: int) -> None:
        send_now(
            post_events,
            eta(
                "D1",
                end + timedelta(minutes=minutes_late),
                at=now + timedelta(seconds=next(step)),
                stops_before=9,
            ),
        )

    new_eta(14)
    assert "delayed" not in kinds("D1")
    new_eta(15)
    new_eta(15)  # the same ETA again
    new_eta(40)  # 25 minutes further: not yet
    assert kinds("D1").count("delayed") == 1
    new_eta(45)  # 30 minutes past the one we told
    new_eta(60)
    new_eta(5)  # back within the window: nothing to say
    assert kinds("D1").count("delayed") == 2
    delays = Notification.objects.filter(kind="delayed").order_by("pk")
    assert [row.context["eta"][11:16] for row in delays] == [
        (end + timedelta(minutes=m)).isoformat()[11:16] for m in (15, 45)
    ]


def test_delivered_and_attempt_failed_carry_the_proof_and_rebooking_links(post_events, send_now):
    now = timezone.now()
    send_now(post_events, {"events": [upsert("F1", at=now), status("F1", "attempt_failed", at=now)]})
    failed = Notification.objects.get(kind="attempt_failed")
    assert f"/t/{failed.delivery.tracking_token}/slots/" in failed.body
    send_now(post_events, {"events": [upsert("F2", at=now), status("F2", "delivered", at=now)]})
    delivered = Notification.objects.get(kind="delivered")
    assert "#feedback" in delivered.body


def test_stale_events_send_nothing(post_events, send_now):
    now = timezone.now()
    send_now(
        post_events,
        {"events": [upsert("S1", at=now), status("S1", "delivered", at=now + timedelta(hours=1))]},
    )
    send_now(post_events, status("S1", "out_for_delivery", at=now))  # older than delivered: stale
    assert kinds("S1") == ["received", "delivered"]


def test_spanish_customers_get_spanish_messages(post_events, send_now):
    send_now(post_events, upsert("ES1", at=timezone.now(), locale="es-MX"))
    [row] = Notification.objects.all()
    assert row.language == "es" and row.body.startswith("Hola Ana, hemos recibido tu pedido")


def test_the_order_received_text_offers_the_slots_page_only_where_the_zone_has_slots(post_events, send_now):
    from scheduling.models import Zone

    Zone.objects.create(code="north", name="North", timezone="America/Chicago")
    for ref, zone in (("Z1", "north"), ("Z2", "nowhere"), ("Z3", "")):
        event = upsert(ref, at=timezone.now())
        if zone:
            event["data"]["zone"] = zone
        send_now(post_events, event)
    bodies = dict(Notification.objects.values_list("delivery__reference", "body"))
    assert "/slots/" in bodies["Z1"]
    assert "/slots/" not in bodies["Z2"] and "/slots/" not in bodies["Z3"]


def test_the_demo_prints_every_message_as_it_would_be_sent(
    post_events, settings, capsys, django_capture_on_commit_callbacks
):
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        pytest.skip("the demo runs embedded: eager Celery; this pass has a broker")
    settings.SMS_BACKEND = "notifications.backends.console.SMSBackend"
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    now = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        post_events(upsert("DEMO-1", at=now))
    with django_capture_on_commit_callbacks(execute=True):
        post_events(upsert("DEMO-2", at=now, phone=None, email="demo@example.com"))
    printed = capsys.readouterr().out
    assert "--- SMS to +19565550123" in printed and "we've got your order" in printed
    assert "To: demo@example.com" in printed and "Content-Type: text/html" in printed
