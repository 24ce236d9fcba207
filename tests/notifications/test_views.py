"""Provider webhooks signed for real, and the customer's preferences page."""

from __future__ import annotations

import base64
import itertools
import json
from urllib.parse import urlencode

import pytest
from anymail.signals import AnymailTrackingEvent, tracking
from django.core import mail
from django.db import transaction
from django.test import Client
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from notifications import feedback, services
from notifications.backends import locmem
from notifications.models import Consent, InboundMessage, Notification, Preference, ProviderEvent
from tests.notifications.conftest import make_delivery

pytestmark = pytest.mark.django_db

_sids = itertools.count(1)
PUBLIC = "https://porch.example"  # what Twilio called; the app itself sees http://testserver


def twilio_post(
    client: Client,
    path: str,
    params: dict[str, str],
    *,
    token: str = "test-twilio-token",  # noqa: S107 (the test settings' token)
    signed_url: str | None = None,
    tamper: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
):
    signature = RequestValidator(token).compute_signature(signed_url or PUBLIC + path, params)
    body = {**params, **(tamper or {})}
    return client.post(
        path,
        data=urlencode(body),
        content_type="application/x-www-form-urlencoded",
        headers={"X-Twilio-Signature": signature, **(headers or {})},
    )


def inbound(client: Client, body: str, *, sender: str = "+19565550123", sid: str | None = None):
    sid = sid or f"SM{next(_sids):032d}"
    return twilio_post(
        client,
        "/webhooks/twilio/inbound/",
        {"From": sender, "To": "+15005550006", "Body": body, "MessageSid": sid},
    )


def opted_out(number: str = "+19565550123") -> bool:
    return Consent.objects.filter(channel="sms", address=number, opted_out=True).exists()


# --- Twilio inbound ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "word",
    [
        "STOP",
        " stop ",
        "Stop.",
        "sToPaLl",
        "UNSUBSCRIBE",
        "cancel",
        "End",
        "QUIT\n",
        "revoke",
        "opt-out",
        "OPTOUT",
    ],
)
def test_every_opt_out_keyword_in_any_case_opts_the_number_out_with_one_confirmation(client, word):
    response = inbound(client, word)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/xml")
    assert response.content.count(b"<Message>") == 1 and b"START" in response.content
    assert opted_out()


def test_queued_texts_are_not_sent_after_stop_and_start_resubscribes(client):
    delivery = make_delivery(email="")
    services.notifications_for_booking(delivery=delivery, moved=False)
    queued = Notification.objects.get()
    inbound(client, "STOP")
    services.notification_deliver(notification_id=queued.pk)
    queued.refresh_from_db()
    assert queued.status == "skipped" and locmem.outbox == []
    assert services.channel_for(delivery) is None
    for word in ("START", "yes", "Unstop"):
        inbound(client, "STOP")
        assert opted_out()
        response = inbound(client, word)
        assert b"STOP to opt out" in response.content and not opted_out()


@pytest.mark.parametrize("word", ["HELP", "help ", "Info"])
def test_help_replies_and_changes_nothing(client, word):
    response = inbound(client, word)
    assert b"Reply STOP to opt out" in response.content
    assert not Consent.objects.exists()
    assert InboundMessage.objects.get().action == "help"


def test_free_text_is_kept_for_staff_and_changes_nothing(client):
    for text in ("stop texting me", "😀" * 400 + "x" * 800, "¿Dónde está mi pedido?"):
        response = inbound(client, text)
        assert response.status_code == 200 and b"<Message>" not in response.content
    assert not Consent.objects.exists()
    assert InboundMessage.objects.filter(needs_review=True).count() == 3


def test_the_same_inbound_message_twice_is_handled_once(client):
    inbound(client, "STOP", sid="SM" + "1" * 32)
    again = inbound(client, "STOP", sid="SM" + "1" * 32)
    assert again.status_code == 200 and b"<Message>" not in again.content
    assert InboundMessage.objects.count() == 1


def test_replies_are_in_the_language_of_the_customers_messages(client):
    delivery = make_delivery(locale="es")
    services.notifications_for_booking(delivery=delivery, moved=False)
    assert "Responde START" in inbound(client, "stop").content.decode()


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"token": "wrong-token"}, "signed with another token"),
        ({"signed_url": "https://evil.example/webhooks/twilio/inbound/"}, "signed for another URL"),
        ({"tamper": {"Body": "START"}}, "body changed after signing"),
        ({"tamper": {"From": "+15550000000"}}, "sender changed after signing"),
    ],
)
def test_badly_signed_inbound_messages_are_refused(client, kwargs, why):
    response = twilio_post(
        client,
        "/webhooks/twilio/inbound/",
        {"From": "+19565550123", "Body": "STOP", "MessageSid": "SMx"},
        **kwargs,
    )
    assert response.status_code == 403, why
    assert not Consent.objects.exists() and not InboundMessage.objects.exists()


def test_unsigned_or_unconfigured_webhooks_are_refused(client, settings):
    assert (
        client.post("/webhooks/twilio/inbound/", {"From": "+19565550123", "Body": "STOP"}).status_code == 403
    )
    assert (
        client.post(
            "/webhooks/twilio/status/", {"MessageSid": "SM1", "MessageStatus": "delivered"}
        ).status_code
        == 403
    )
    assert client.post("/webhooks/twilio/inbound/", HTTP_X_TWILIO_SIGNATURE="x" * 5000).status_code == 403
    assert client.get("/webhooks/twilio/inbound/").status_code == 405
    settings.TWILIO_AUTH_TOKEN = ""
    assert inbound(client, "STOP").status_code == 403
    assert not Consent.objects.exists()


@pytest.mark.parametrize(
    "raw", ["+19565550123", "+1 (956) 555-0123", "19565550123", "+1-956-555-0123", "001 956 555 0123"]
)
def test_phone_numbers_in_any_format_are_one_consent_record(raw):
    assert services.phone_normalize(raw) == "+19565550123"


@pytest.mark.parametrize("raw", ["", "abc", "+", "1" * 50, "+999", "😀"])
def test_things_that_are_not_phone_numbers_are_not_normalised(raw):
    assert services.phone_normalize(raw) == ""


# --- Twilio status callbacks -----------------------------------------------------------------------


@pytest.fixture
def sent_sms():
    delivery = make_delivery()
    services.notifications_for_booking(delivery=delivery, moved=False)
    row = Notification.objects.get()
    services.notification_deliver(notification_id=row.pk)
    row.refresh_from_db()
    return row


def callback(
    client: Client, row: Notification, status: str, *, token: str | None = None, error: str = "", **kwargs
):
    params = {"MessageSid": row.provider_id, "MessageStatus": status, "AccountSid": "AC" + "0" * 32}
    if error:
        params["ErrorCode"] = error
    headers = {"I-Twilio-Idempotency-Token": token} if token else {}
    return twilio_post(client, f"/webhooks/twilio/status/?n={row.pk}", params, headers=headers, **kwargs)


def test_status_callbacks_signed_on_the_public_https_url_are_accepted_behind_a_proxy(client, sent_sms):
    # The app is reached over http://testserver, as behind a TLS-terminating proxy.
    assert callback(client, sent_sms, "delivered", token="tok-1").status_code == 204
    sent_sms.refresh_from_db()
    assert sent_sms.status == "delivered"


def test_tampered_callbacks_are_refused(client, sent_sms):
    assert callback(client, sent_sms, "sent", tamper={"MessageStatus": "undelivered"}).status_code == 403
    assert callback(client, sent_sms, "sent", tamper={"ErrorCode": "21610"}).status_code == 403
    sent_sms.refresh_from_db()
    assert sent_sms.status == "sent" and not ProviderEvent.objects.exists()


def test_a_duplicate_callback_is_one_row_and_status_never_goes_backwards(client, sent_sms):
    for _ in range(3):
        assert callback(client, sent_sms, "delivered", token="tok-delivered").status_code == 204
    assert callback(client, sent_sms, "sent", token="tok-sent").status_code == 204  # late, out of order
    assert ProviderEvent.objects.filter(key="twilio:tok-delivered").count() == 1
    assert ProviderEvent.objects.count() == 2
    sent_sms.refresh_from_db()
    assert sent_sms.status == "delivered"


def test_an_undelivered_sms_falls_back_to_email(client, sent_sms):
    callback(client, sent_sms, "undelivered", error="30003")
    sent_sms.refresh_from_db()
    assert (sent_sms.status, sent_sms.error_code) == ("undelivered", "30003")
    fallback = sent_sms.fallback
    assert (fallback.channel, fallback.kind, fallback.recipient) == ("email", "booked", "ana@example.com")
    callback(client, sent_sms, "failed", error="30003", token="again")
    assert Notification.objects.filter(channel="email").count() == 1


def test_a_callback_with_21610_opts_the_number_out(client, sent_sms):
    callback(client, sent_sms, "failed", error="21610")
    assert opted_out()


def test_a_callback_that_beats_our_own_sent_update_still_lands():
    delivery = make_delivery()
    services.notifications_for_booking(delivery=delivery, moved=False)
    row = Notification.objects.get()
    Notification.objects.filter(pk=row.pk).update(status="sending")
    feedback.sms_status_record(
        key="k", notification_id=row.pk, provider_id="SMnew", status="delivered", error_code="", payload={}
    )
    row.refresh_from_db()
    assert row.status == "delivered"


def test_callbacks_for_unknown_messages_are_acknowledged_and_ignored(client):
    params = {"MessageSid": "SMunknown", "MessageStatus": "delivered"}
    for path in (
        "/webhooks/twilio/status/",
        "/webhooks/twilio/status/?n=999999",
        "/webhooks/twilio/status/?n=abc",
        "/webhooks/twilio/status/?n=" + "9" * 40,
    ):
        assert twilio_post(client, path, params).status_code == 204
    assert not Notification.objects.exists()


# --- ESP tracking (anymail) -------------------------------------------------------------------------


def esp_event(event_type: str, recipient: str, **kwargs) -> None:
    tracking.send(
        sender=object,
        event=AnymailTrackingEvent(event_type=event_type, recipient=recipient, **kwargs),
        esp_name="TestESP",
    )


def test_the_esp_webhook_needs_its_basic_auth_secret(client, settings):
    payload = json.dumps(
        {"RecordType": "Bounce", "Type": "HardBounce", "Email": "x@example.com", "ID": 1, "MessageID": "m1"}
    )
    path = "/webhooks/anymail/postmark/tracking/"
    assert (
        client.post(path, payload, content_type="application/json").status_code == 400
    )  # no secret configured
    settings.ANYMAIL = {"WEBHOOK_SECRET": "hook:secret"}
    assert client.post(path, payload, content_type="application/json").status_code == 400
    wrong = base64.b64encode(b"hook:wrong").decode()
    assert (
        client.post(
            path, payload, content_type="application/json", HTTP_AUTHORIZATION=f"Basic {wrong}"
        ).status_code
        == 400
    )
    assert not Consent.objects.exists()
    good = base64.b64encode(b"hook:secret").decode()
    assert (
        client.post(
            path, payload, content_type="application/json", HTTP_AUTHORIZATION=f"Basic {good}"
        ).status_code
        == 200
    )
    assert Consent.objects.get(channel="email", address="x@example.com").reason == "bounced"


def test_bounced_and_complained_addresses_are_suppressed_and_never_mailed_again():
    bounced = make_delivery(phone="", email="Bounced@Example.com")
    complained = make_delivery(phone="", email="complained@example.com")
    services.notifications_for_booking(delivery=bounced, moved=False)
    first = Notification.objects.get()
    services.notification_deliver(notification_id=first.pk)
    first.refresh_from_db()
    assert len(mail.outbox) == 1
    esp_event(
        "bounced",
        "bounced@example.com",
        event_id="ev-1",
        message_id=first.provider_id,
        metadata={"notification_id": str(first.pk)},
    )
    esp_event("complained", "complained@example.com", event_id="ev-2")
    assert set(Consent.objects.filter(opted_out=True).values_list("address", flat=True)) == {
        "bounced@example.com",
        "complained@example.com",
    }
    first.refresh_from_db()
    assert first.status == "bounced"
    for delivery in (bounced, complained):
        delivery.window_start = None
        delivery.save()
        services.notifications_for_booking(delivery=delivery, moved=True)
    for row_id in services.notification_due_ids():
        services.notification_deliver(notification_id=row_id)
    assert len(mail.outbox) == 1  # 0 ESP sends after the suppression


def test_email_events_mark_delivery_and_unsubscribe():
    delivery = make_delivery(phone="")
    services.notifications_for_booking(delivery=delivery, moved=False)
    row = Notification.objects.get()
    services.notification_deliver(notification_id=row.pk)
    esp_event("delivered", "ana@example.com", event_id="d1", metadata={"notification_id": str(row.pk)})
    esp_event("delivered", "ana@example.com", event_id="d1", metadata={"notification_id": str(row.pk)})
    row.refresh_from_db()
    assert row.status == "delivered" and ProviderEvent.objects.count() == 1
    esp_event("unsubscribed", "ana@example.com", event_id="u1", metadata={"notification_id": "not-a-number"})
    assert Consent.objects.get(address="ana@example.com").opted_out


# --- preferences page -----------------------------------------------------------------------------


def test_the_customer_turns_sms_off_and_picks_spanish(client):
    delivery = make_delivery()
    url = f"/t/{delivery.tracking_token}/notifications/"
    page = client.get(url)
    assert page.status_code == 200 and b'name="sms"' in page.content and b'name="email"' in page.content
    response = client.post(url, {"email": "on", "language": "es"})
    assert response.status_code == 302 and response["Location"] == url
    preference = Preference.objects.get(delivery=delivery)
    assert (preference.sms, preference.email, preference.language) == (False, True, "es")
    again = client.get(url).content.decode()
    assert (
        'value="es" selected' in again
        and "Tus mensajes" in again
        and "Hemos guardado tus preferencias." in again
    )
    services.notifications_for_booking(delivery=delivery, moved=False)
    row = Notification.objects.get()
    assert (row.channel, row.language) == ("email", "es")


@pytest.mark.parametrize(
    "data",
    [{"language": "xx"}, {"language": "<script>"}, {"sms": "on", "language": "e" * 5000}, {}],
)
def test_bad_preference_input_is_a_400_and_changes_nothing(client, data):
    delivery = make_delivery()
    response = client.post(f"/t/{delivery.tracking_token}/notifications/", data)
    assert response.status_code == 400
    assert not Preference.objects.exists()


@pytest.mark.parametrize("token", ["nope", "x" * 64, "a" * 500, "%00", "..%2F..%2Fetc"])
def test_unknown_tokens_are_404(client, token):
    assert client.get(f"/t/{token}/notifications/").status_code == 404
    assert client.post(f"/t/{token}/notifications/", {"language": "en"}).status_code == 404


def test_the_preferences_form_needs_its_csrf_token():
    delivery = make_delivery()
    response = Client(enforce_csrf_checks=True).post(
        f"/t/{delivery.tracking_token}/notifications/", {"language": "en"}
    )
    assert response.status_code == 403 and not Preference.objects.exists()


def test_hostile_webhook_bodies_get_4xx_never_5xx(client):
    too_many = urlencode({f"f{i}": "x" for i in range(1500)})
    response = client.post(
        "/webhooks/twilio/inbound/",
        data=too_many,
        content_type="application/x-www-form-urlencoded",
        headers={"X-Twilio-Signature": "abc"},
    )
    assert 400 <= response.status_code < 500
    garbage = client.post(
        "/webhooks/twilio/status/",
        data=b"\xff\xfe\x00garbage",
        content_type="application/x-www-form-urlencoded",
        headers={"X-Twilio-Signature": "abc"},
    )
    assert garbage.status_code == 403
    as_json = client.post("/webhooks/twilio/status/", data="[1, 2]", content_type="application/json")
    assert as_json.status_code == 403


@hsettings(max_examples=60, deadline=None)
@given(
    order=st.lists(
        st.sampled_from(["queued", "sending", "sent", "delivered", "read"]), min_size=1, max_size=8
    )
)
def test_callbacks_in_any_order_and_number_end_at_the_furthest_status(order):
    with transaction.atomic():
        delivery = make_delivery()
        row = Notification.objects.create(
            delivery=delivery, channel="sms", kind="booked", recipient="+19565550123", body="x",
            dedupe_key=f"prop-{delivery.pk}", status="sent", next_attempt_at=delivery.details_at,
            provider_id=f"SM{delivery.pk}",
        )  # fmt: skip
        for index, status in enumerate(order):
            feedback.sms_status_record(
                key=f"prop-{delivery.pk}-{index % 3}-{status}", notification_id=row.pk,
                provider_id=row.provider_id, status=status, error_code="", payload={},
            )  # fmt: skip
        row.refresh_from_db()
        expected = "delivered" if {"delivered", "read"} & set(order) else "sent"
        assert row.status == expected
        transaction.set_rollback(True)
