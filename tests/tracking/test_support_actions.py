"""The support desk's actions: resend the link (a real notification, sent once, STOP
respected), revoke and reissue the token, book or move a slot, add a note, record a "where is
my order" contact. Each is audited with who and when; double submits and stale pages are
answered with a clear message, never a 5xx."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import mail
from django.test import Client, TestCase
from django.utils import timezone

from notifications.backends import locmem
from notifications.models import Consent, Kind, Notification, Preference
from notifications.tasks import notification_send
from scheduling.models import BookedBy, Booking, BookingChange
from scheduling.services import booking_book
from tests.scheduling.factories import make_slot, make_zone
from tests.tracking.support_factories import action_url, logged_in, make_delivery, page_url, support_user
from tracking.models import OutboundEvent, SupportAction
from tracking.support import support_nonce

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _message_seams(settings: Any) -> None:
    settings.SMS_BACKEND = "notifications.backends.locmem.SMSBackend"
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    settings.NOTIFY_QUIET_HOURS = "00:00-23:59"  # the customer asked now: the link goes anyway
    settings.PORCHLIGHT_PUBLIC_URL = "https://porch.example"
    locmem.outbox.clear()
    mail.outbox = []


@pytest.fixture
def agent_user():
    return support_user("alice")


@pytest.fixture
def agent(agent_user) -> Client:
    return logged_in(agent_user)


def post(client: Client, delivery, action: str, **data: str) -> Any:
    return client.post(action_url(delivery, action), {"nonce": support_nonce(), **data}, follow=True)


def page_messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_resending_the_link_by_sms_writes_one_notification_sent_once_and_shows_it(agent, agent_user) -> None:
    delivery = make_delivery()
    nonce = support_nonce()
    with TestCase.captureOnCommitCallbacks(execute=False) as callbacks:
        first = agent.post(action_url(delivery, "resend"), {"nonce": nonce, "channel": "sms"}, follow=True)
        again = agent.post(action_url(delivery, "resend"), {"nonce": nonce, "channel": "sms"}, follow=True)
    assert first.status_code == again.status_code == 200
    assert "Tracking link queued by sms to +1956555" in page_messages(first)[0]
    assert "already sent" in page_messages(again)[0]
    row = Notification.objects.get(delivery=delivery)
    assert (row.kind, row.channel, row.recipient, row.status) == (
        Kind.TRACKING_LINK,
        "sms",
        delivery.phone,
        "queued",
    )
    assert f"https://porch.example/t/{delivery.tracking_token}/" in row.body
    assert len(callbacks) == 1  # one send queued on commit

    notification_send([row.pk])  # the worker's task, called as Celery would
    notification_send([row.pk])  # a redelivery changes nothing
    assert [m.body for m in locmem.outbox] == [row.body]
    row.refresh_from_db()
    assert row.status == "sent"
    action = SupportAction.objects.get(delivery=delivery)
    assert (action.kind, action.user, action.username) == ("link_sent", agent_user, "alice")
    assert action.detail == {"channel": "sms", "recipient": delivery.phone, "notification": row.pk}
    html = agent.get(page_url(delivery)).content.decode()
    assert "tracking link (sent by support) by SMS" in html and "Tracking link sent again" in html


def test_resending_by_email_goes_to_the_email_address(agent) -> None:
    delivery = make_delivery()
    with TestCase.captureOnCommitCallbacks(execute=False):
        post(agent, delivery, "resend", channel="email")
    row = Notification.objects.get(delivery=delivery)
    notification_send([row.pk])
    assert (row.channel, row.recipient) == ("email", delivery.email)
    assert len(mail.outbox) == 1 and delivery.tracking_token in mail.outbox[0].body


def test_a_customer_who_texted_stop_gets_no_sms_and_the_agent_is_told_why(agent) -> None:
    delivery = make_delivery()
    Consent.objects.create(
        channel="sms", address=delivery.phone, opted_out=True, reason="STOP", changed_at=timezone.now()
    )
    response = post(agent, delivery, "resend", channel="sms")
    assert response.status_code == 200
    assert "opted out of SMS" in page_messages(response)[0]
    assert not Notification.objects.exists() and not SupportAction.objects.exists()


def test_stop_after_the_resend_was_queued_still_stops_the_sms(agent) -> None:
    delivery = make_delivery()
    with TestCase.captureOnCommitCallbacks(execute=False):
        post(agent, delivery, "resend", channel="sms")
    Consent.objects.create(
        channel="sms", address=delivery.phone, opted_out=True, reason="STOP", changed_at=timezone.now()
    )
    row = Notification.objects.get(delivery=delivery, channel="sms")
    notification_send([row.pk])
    row.refresh_from_db()
    assert row.status == "skipped" and locmem.outbox == []


def test_email_turned_off_by_the_customer_is_respected(agent) -> None:
    delivery = make_delivery()
    Preference.objects.create(delivery=delivery, email=False)
    response = post(agent, delivery, "resend", channel="email")
    assert "opted out of e-mail (or turned it off)" in page_messages(response)[0]
    assert not Notification.objects.exists()


def test_reissuing_the_token_kills_the_old_link_and_is_audited(agent, client) -> None:
    delivery = make_delivery()
    old = delivery.tracking_token
    response = post(agent, delivery, "reissue", token=old)
    assert "old tracking link no longer works" in page_messages(response)[0]
    delivery.refresh_from_db()
    assert delivery.tracking_token != old and delivery.token_revoked_at is None
    assert client.get(f"/t/{old}/").status_code == 404
    assert client.get(f"/t/{delivery.tracking_token}/").status_code == 200
    action = SupportAction.objects.get(delivery=delivery)
    assert (
        action.kind == "token_reissued"
        and action.username == "alice"
        and action.detail == {"old_token_ends": old[-4:]}
    )


def test_a_reissue_from_a_stale_page_does_nothing_and_says_so(agent) -> None:
    delivery = make_delivery()
    seen = delivery.tracking_token
    post(agent, delivery, "reissue", token=seen)  # another agent, first
    current = type(delivery).objects.get(pk=delivery.pk).tracking_token
    response = post(agent, delivery, "reissue", token=seen)  # this agent's page still shows the old one
    assert response.status_code == 200
    assert "reissued by someone else" in page_messages(response)[0]
    assert type(delivery).objects.get(pk=delivery.pk).tracking_token == current
    assert SupportAction.objects.filter(kind="token_reissued").count() == 1


def test_booking_and_moving_a_slot_on_the_customers_behalf(agent) -> None:
    zone = make_zone(code="laredo-actions")
    first, second = make_slot(zone=zone, hours_ahead=2), make_slot(zone=zone, hours_ahead=30)
    delivery = make_delivery(zone_code=zone.code)
    booked = post(agent, delivery, "slot", slot=str(first.pk), current_slot="")
    assert "booked for" in page_messages(booked)[0]  # inside the customers' cutoff: staff may
    moved = post(agent, delivery, "slot", slot=str(second.pk), current_slot=str(first.pk))
    assert "moved to" in page_messages(moved)[0]
    assert Booking.objects.get(delivery=delivery).slot == second
    changes = list(BookingChange.objects.filter(booking__delivery=delivery).values_list("by", "staff_user"))
    assert changes == [(BookedBy.STAFF, "alice"), (BookedBy.STAFF, "alice")]
    assert OutboundEvent.objects.filter(delivery=delivery, type="delivery.slot_booked").count() == 2
    assert set(Notification.objects.filter(delivery=delivery).values_list("kind", flat=True)) == {
        "booked",
        "moved",
    }


def test_moving_a_slot_another_agent_just_moved_is_refused_with_a_clear_message(agent) -> None:
    zone = make_zone(code="laredo-stale")
    a, b, c = (make_slot(zone=zone, hours_ahead=h) for h in (24, 30, 36))
    delivery = make_delivery(zone_code=zone.code)
    booking_book(delivery=delivery, slot_id=a.pk)
    booking_book(delivery=delivery, slot_id=b.pk, by=BookedBy.STAFF, staff_user="bob")  # bob, meanwhile
    response = post(agent, delivery, "slot", slot=str(c.pk), current_slot=str(a.pk))  # alice's page shows a
    assert response.status_code == 200
    assert "changed (by the customer or another agent)" in page_messages(response)[0]
    assert Booking.objects.get(delivery=delivery).slot == b


def test_a_slot_the_rules_refuse_gives_the_rules_message(agent) -> None:
    zone = make_zone(code="laredo-full")
    full = make_slot(zone=zone, capacity=0)
    delivery = make_delivery(zone_code=zone.code)
    response = post(agent, delivery, "slot", slot=str(full.pk), current_slot="")
    assert "just filled up" in page_messages(response)[0]
    other_zone = make_slot(zone=make_zone())
    response = post(agent, delivery, "slot", slot=str(other_zone.pk), current_slot="")
    assert "choose one of the delivery times" in page_messages(response)[0]
    assert not Booking.objects.exists()


def test_a_note_and_a_contact_are_audited_once_per_form(agent, agent_user) -> None:
    delivery = make_delivery()
    nonce = support_nonce()
    for _ in range(2):  # a double click
        agent.post(action_url(delivery, "note"), {"nonce": nonce, "text": "Customer prefers the side gate"})
        agent.post(
            action_url(delivery, "contact"), {"nonce": nonce, "channel": "phone", "text": "called twice"}
        )
    note = SupportAction.objects.get(kind="note")
    contact = SupportAction.objects.get(kind="contact")
    assert (note.text, note.user, note.username) == ("Customer prefers the side gate", agent_user, "alice")
    assert (contact.detail, contact.text) == ({"channel": "phone"}, "called twice")
    assert abs((timezone.now() - note.at).total_seconds()) < 60
    html = agent.get(page_url(delivery)).content.decode()
    assert "Customer prefers the side gate" in html and "(phone) called twice" in html


@pytest.mark.parametrize(
    ("action", "data"),
    [
        ("note", {"text": ""}),
        ("note", {"text": "x" * 2001}),
        ("note", {"text": "a\x00b" * 10}),
        ("note", {"text": "😀" * 100}),
        ("contact", {"channel": "pigeon"}),
        ("contact", {"channel": "phone", "text": "x" * 100_000}),
        ("resend", {"channel": "fax"}),
        ("resend", {"channel": ""}),
        ("reissue", {"token": ""}),
        ("reissue", {"token": "'; DROP TABLE x; --"}),
        ("slot", {"slot": "abc", "current_slot": ""}),
        ("slot", {"slot": "1" * 40, "current_slot": ""}),
        ("slot", {"slot": "-1", "current_slot": ""}),
        ("slot", {"slot": "1", "current_slot": "not-a-slot"}),
        ("slot", {}),
    ],
)
def test_malformed_action_input_is_refused_without_a_5xx(agent, action: str, data: dict[str, str]) -> None:
    delivery = make_delivery()
    response = agent.post(action_url(delivery, action), {"nonce": support_nonce(), **data}, follow=True)
    assert response.status_code == 200
    assert page_messages(response), (action, data)


@pytest.mark.parametrize("nonce", ["", "short", "x" * 65, "bad nonce with spaces!!", "\x00" * 20])
def test_a_missing_or_forged_nonce_is_refused(agent, nonce: str) -> None:
    delivery = make_delivery()
    response = agent.post(action_url(delivery, "note"), {"nonce": nonce, "text": "hello"}, follow=True)
    assert response.status_code == 200 and "expired" in page_messages(response)[0]
    assert not SupportAction.objects.exists()


def test_unknown_actions_deliveries_and_methods_are_4xx(agent) -> None:
    delivery = make_delivery()
    assert agent.post(action_url(delivery, "delete"), {"nonce": support_nonce()}).status_code == 404
    assert (
        agent.post("/admin/tracking/delivery/999999/support/note/", {"nonce": support_nonce()}).status_code
        == 404
    )
    assert (
        agent.post("/admin/tracking/delivery/abc/support/note/", {"nonce": support_nonce()}).status_code
        == 404
    )
    assert agent.get(action_url(delivery, "note")).status_code == 405


def test_a_post_without_the_csrf_token_is_refused() -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(support_user("carol"))
    delivery = make_delivery()
    response = client.post(action_url(delivery, "note"), {"nonce": support_nonce(), "text": "x"})
    assert response.status_code == 403 and not SupportAction.objects.exists()
