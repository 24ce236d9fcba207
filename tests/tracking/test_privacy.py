"""Privacy by default (issue #7 point 5, RELIABILITY C3): retention jobs and data-subject
requests (`manage.py customer_data export|erase`)."""

from __future__ import annotations

import io
import itertools
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications.models import Channel, Consent, InboundMessage, Notification, ProviderEvent
from notifications.services import channel_for, consent_set
from tests.tracking.test_page import make_delivery, make_driver, page_url
from tracking import privacy, tasks
from tracking.customer import delivery_timeline
from tracking.models import (
    Delivery,
    DeliveryProof,
    InboundEvent,
    LocationPing,
    OutboundEvent,
    ProviderPayload,
    SupportAction,
)

pytestmark = pytest.mark.django_db
NOW = timezone.now()
_ids = itertools.count(1)
PHONE, EMAIL = "+19565550123", "ana@example.com"


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def finished_delivery(days: float, **overrides: Any) -> Delivery:
    """A delivery delivered `days` ago, with everything that copies its personal data."""
    delivery = make_delivery(status="delivered", status_at=days_ago(days), instructions="Gate code 4512",
                             safe_place="Porch", feedback_comment="Lovely driver, Sam", rating=5,
                             feedback_at=days_ago(days), status_reason="", **overrides)  # fmt: skip
    DeliveryProof.objects.create(
        delivery=delivery, recipient_name="Ana García", note="Left with Ana", photo=b"\x89PNG....",
        photo_content_type="image/png", occurred_at=days_ago(days),
    )  # fmt: skip
    for n, state in enumerate(("out_for_delivery", "delivered")):
        InboundEvent.objects.create(
            event_id=f"ev_{next(_ids)}", type="delivery.status",
            occurred_at=days_ago(days) + timedelta(minutes=n), reference=delivery.reference,
            delivery=delivery, result="accepted", received_at=days_ago(days),
            payload={"id": "x", "type": "delivery.status", "occurred_at": "t",
                     "data": {"reference": delivery.reference, "status": state, "reason": "Ana was out"}},
        )  # fmt: skip
    InboundEvent.objects.create(
        event_id=f"ev_{next(_ids)}", type="delivery.upserted", occurred_at=days_ago(days + 1),
        reference=delivery.reference, delivery=delivery, result="accepted", received_at=days_ago(days + 1),
        payload={"data": {"reference": delivery.reference,
                          "customer": {"name": "Ana García", "phone": PHONE}}},
    )  # fmt: skip
    sms = Notification.objects.create(
        delivery=delivery, channel="sms", kind="delivered", recipient=delivery.phone,
        body="Hi Ana, delivered", dedupe_key=f"k{next(_ids)}", next_attempt_at=days_ago(days),
        status="delivered",
    )  # fmt: skip
    ProviderEvent.objects.create(
        key=f"p{next(_ids)}", notification=sms, provider="twilio", status="delivered",
        payload={"To": delivery.phone}, received_at=days_ago(days),
    )  # fmt: skip
    OutboundEvent.objects.create(
        event_id=f"out_{next(_ids)}", type="delivery.feedback", delivery=delivery, status="sent",
        data={"reference": delivery.reference, "rating": 5, "comment": "Lovely driver, Sam"},
        occurred_at=days_ago(days), next_attempt_at=days_ago(days),
    )  # fmt: skip
    ProviderPayload.objects.create(
        provider="onfleet", key=f"k{next(_ids)}", reference=delivery.reference,
        body='{"recipients": [{"name": "Ana García"}]}', outcome="applied", received_at=days_ago(days),
    )  # fmt: skip
    SupportAction.objects.create(
        delivery=delivery, kind="link_sent", username="agent", text="Ana called, lives at 1201 Matamoros",
        detail={"channel": "sms", "recipient": delivery.phone, "notification": sms.pk},
        nonce=f"n{next(_ids)}", at=days_ago(days),
    )  # fmt: skip
    return delivery


def everything() -> dict[str, Any]:
    """Every row retention may touch, to compare two runs."""
    return {
        model.__name__: sorted(map(repr, model.objects.values()))
        for model in (Delivery, DeliveryProof, Notification, ProviderEvent, InboundEvent, OutboundEvent,
                      ProviderPayload, LocationPing, InboundMessage, Consent, SupportAction)
    }  # fmt: skip


def test_retention_deletes_old_positions_and_erases_old_deliveries_and_a_second_run_changes_nothing() -> None:
    driver = make_driver()
    for age in (0, 1, 6.9, 7.1, 30, 400):
        LocationPing.objects.create(
            driver=driver, lat=27.5, lon=-99.5, recorded_at=days_ago(age), received_at=NOW
        )
    old = finished_delivery(91)
    very_old = finished_delivery(400, phone="+19565550199", email="old@example.com")
    recent = finished_delivery(30)
    active = make_delivery(status="out_for_delivery", status_at=days_ago(200), instructions="Gate code 4512")

    report = privacy.retention_run(now=NOW)

    assert report.pings == 3 and report.deliveries == 2
    assert sorted(LocationPing.objects.values_list("recorded_at", flat=True)) == [
        days_ago(6.9), days_ago(1), days_ago(0)
    ]  # fmt: skip
    for delivery in (old, very_old):
        delivery.refresh_from_db()
        assert [getattr(delivery, name) for name in privacy.ERASED_DELIVERY_FIELDS] == [""] * 10
        assert delivery.rating == 5 and delivery.status == "delivered" and delivery.city == "Laredo"
        assert (delivery.lat, delivery.lon) == (27.5, -99.51)  # about a kilometre
        assert delivery.token_revoked_at is not None
        proof = DeliveryProof.objects.get(delivery=delivery)
        assert (proof.recipient_name, proof.note, proof.photo) == ("", "", None)
        sms = Notification.objects.get(delivery=delivery)
        assert (sms.recipient, sms.body, sms.status) == ("", "", "delivered")
        assert ProviderEvent.objects.get(notification=sms).payload == {}
        assert OutboundEvent.objects.get(delivery=delivery).data == {
            "reference": delivery.reference,
            "erased": True,
        }
        assert ProviderPayload.objects.get(reference=delivery.reference).body == ""
        action = SupportAction.objects.get(delivery=delivery)
        assert (action.text, action.detail, action.username) == (
            "",
            {"channel": "sms", "notification": sms.pk},
            "agent",
        )
        payloads = json.dumps(
            list(InboundEvent.objects.filter(delivery=delivery).values_list("payload", flat=True))
        )
        assert "Ana" not in payloads and PHONE not in payloads
        # Kept for statistics: the timeline of statuses.
        assert [entry.status for entry in delivery_timeline(delivery=delivery)] == [
            "out_for_delivery",
            "delivered",
        ]
    for untouched in (recent, active):
        assert Delivery.objects.get(pk=untouched.pk).instructions == "Gate code 4512"
    assert Notification.objects.get(delivery=recent).body == "Hi Ana, delivered"

    before = everything()
    again = privacy.retention_run(now=NOW)
    assert again.changed == 0
    assert everything() == before


def test_an_opt_out_still_blocks_texts_to_a_new_order_after_the_number_was_erased() -> None:
    finished_delivery(120)
    consent_set(channel=Channel.SMS, address=PHONE, opted_out=True, reason="keyword STOP")
    privacy.retention_run(now=NOW)
    assert not Delivery.objects.filter(phone=PHONE).exists()
    assert Consent.objects.get(address=PHONE).opted_out  # kept, as the plain E.164 number
    new_order = make_delivery(phone=PHONE, email="")
    assert channel_for(new_order) is None  # no SMS, and no email to fall back to


def test_retention_works_in_bounded_batches(settings: Any) -> None:
    settings.PORCHLIGHT_RETENTION_BATCH = 2
    driver = make_driver()
    LocationPing.objects.bulk_create(
        LocationPing(driver=driver, lat=1, lon=1, recorded_at=days_ago(10 + n), received_at=NOW)
        for n in range(5)
    )
    for _ in range(5):
        finished_delivery(100)
    with CaptureQueriesContext(connection) as queries:
        report = privacy.retention_run(now=NOW)
    assert report.pings == 5 and report.deliveries == 5
    ping_deletes = [
        q for q in queries.captured_queries if q["sql"].startswith('DELETE FROM "tracking_locationping"')
    ]
    assert len(ping_deletes) == 3  # 2 + 2 + 1
    assert all(q["sql"].count("%s") <= 2 or q["sql"].count(",") < 200 for q in queries.captured_queries)


def test_stale_events_provider_payloads_and_received_sms_are_erased_past_the_age() -> None:
    InboundEvent.objects.create(
        event_id=None, type="delivery.upserted", reference="ORD-X", result="rejected",
        received_at=days_ago(95),
        payload={"data": {"customer": {"name": "Ana García"}}}, errors=[{"field": "phone", "value": PHONE}],
    )  # fmt: skip
    fresh = InboundEvent.objects.create(
        event_id=None, type="delivery.upserted", reference="ORD-Y", result="rejected",
        received_at=days_ago(5),
        payload={"data": {"customer": {"name": "Bo"}}},
    )  # fmt: skip
    ProviderPayload.objects.create(
        provider="spoke", key="k-old", body="{...}", outcome="failed", received_at=days_ago(95)
    )
    InboundMessage.objects.create(sender=PHONE, body="where is it", action="review", received_at=days_ago(95))
    InboundMessage.objects.create(sender=PHONE, body="STOP", action="opt_out", received_at=days_ago(3))

    report = privacy.retention_run(now=NOW)

    assert report.stale == {"inbound_events": 1, "provider_payloads": 1, "inbound_messages": 1}
    assert InboundEvent.objects.get(reference="ORD-X").payload == {}
    assert InboundEvent.objects.get(pk=fresh.pk).payload != {}
    assert list(InboundMessage.objects.values_list("body", flat=True)) == ["STOP"]
    assert privacy.retention_run(now=NOW).changed == 0


def test_the_beat_job_is_a_registered_task_that_runs_the_retention() -> None:
    old = finished_delivery(100)
    assert tasks.retention_run.name == "tracking.tasks.retention_run"
    assert tasks.retention_run.apply().get() > 0
    assert Delivery.objects.get(pk=old.pk).customer_name == ""


def test_an_erased_deliverys_link_is_gone(client: Any) -> None:
    delivery = finished_delivery(100)
    privacy.retention_run(now=NOW)
    assert client.get(page_url(delivery)).status_code == 404


# --- manage.py customer_data ---------------------------------------------------------------------


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("customer_data", *args, stdout=out)
    return out.getvalue()


def test_export_finds_a_person_by_phone_in_any_common_international_form() -> None:
    delivery = finished_delivery(3)
    other = make_delivery(phone="+19565550777", email="someone@example.com")
    consent_set(channel=Channel.SMS, address=PHONE, opted_out=True, reason="keyword STOP")
    InboundMessage.objects.create(sender=PHONE, body="STOP", action="opt_out", received_at=NOW)
    for form in ("+1 956 555 0123", "+1 (956) 555-0123", "19565550123"):
        export = json.loads(run("export", "--phone", form))
        assert export["subject"]["phone"] == PHONE
        assert [d["reference"] for d in export["deliveries"]] == [delivery.reference]
    first = export["deliveries"][0]
    assert first["customer_name"] == "Ana García" and first["instructions"] == "Gate code 4512"
    assert first["proof"]["recipient_name"] == "Ana García" and first["proof"]["photo_bytes"] == 8
    assert len(first["inbound_events"]) == 3 and len(first["outbound_events"]) == 1
    assert first["support_actions"][0]["text"] == "Ana called, lives at 1201 Matamoros"
    assert [n["body"] for n in export["notifications"]] == ["Hi Ana, delivered"]
    assert export["consent"][0]["opted_out"] is True
    assert [m["body"] for m in export["inbound_messages"]] == ["STOP"]
    assert other.reference not in json.dumps(export)


def test_export_by_email_ignores_case() -> None:
    delivery = finished_delivery(3)
    export = json.loads(run("export", "--email", "  ANA@Example.com "))
    assert [d["reference"] for d in export["deliveries"]] == [delivery.reference]


def test_erase_blanks_everything_about_the_person_keeps_the_opt_out_and_is_idempotent() -> None:
    delivery = finished_delivery(3)
    active = make_delivery(status="scheduled")  # same person, a delivery still on its way
    someone_else = make_delivery(phone="+19565550777", email="someone@example.com")
    consent_set(channel=Channel.SMS, address=PHONE, opted_out=True, reason="keyword STOP")
    consent_set(channel=Channel.EMAIL, address=EMAIL, opted_out=False, reason="subscribed")
    InboundMessage.objects.create(sender=PHONE, body="Where is my parcel?", action="review", received_at=NOW)

    out = run("erase", "--phone", "+1 956 555 0123", "--email", EMAIL, "--yes")

    assert "erased: 2 deliveries" in out and "opt-outs kept: 1" in out
    for erased in (delivery, active):
        assert Delivery.objects.get(pk=erased.pk).customer_name == ""
    assert Delivery.objects.get(pk=someone_else.pk).customer_name == "Ana García"
    assert not InboundMessage.objects.exists()
    assert list(Consent.objects.values_list("address", "opted_out")) == [(PHONE, True)]
    export = json.loads(run("export", "--phone", PHONE))
    assert export["deliveries"] == [] and export["notifications"] == []
    assert len(export["consent"]) == 1  # the suppression entry, nothing else
    before = everything()
    assert "erased: 0 deliveries, 0 other messages, 0 SMS received; consent removed: 0" in run(
        "erase", "--phone", PHONE, "--yes"
    )
    assert everything() == before


@pytest.mark.parametrize(
    "args",
    [
        ("export",),
        ("export", "--phone", "not a number"),
        ("export", "--phone", "1" * 500),
        ("export", "--email", "nobody"),
        ("erase", "--phone", "'; DROP TABLE tracking_delivery; --", "--yes"),
    ],
)
def test_a_bad_phone_or_email_is_refused_with_a_clear_error(args: tuple[str, ...]) -> None:
    finished_delivery(3)
    with pytest.raises(CommandError):
        run(*args)
    assert Delivery.objects.get().customer_name == "Ana García"


def test_erase_asks_before_it_erases(monkeypatch: Any) -> None:
    finished_delivery(3)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    with pytest.raises(CommandError, match="nothing erased"):
        run("erase", "--phone", PHONE)
    assert Delivery.objects.get().customer_name == "Ana García"


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_beat_job_runs_on_a_real_worker() -> None:
    from tests.services import celery_worker, wait_for

    old = finished_delivery(100)
    driver = make_driver()
    LocationPing.objects.create(driver=driver, lat=1, lon=1, recorded_at=days_ago(30), received_at=NOW)
    with celery_worker():
        tasks.retention_run.delay()  # what beat publishes every PORCHLIGHT_RETENTION_INTERVAL
        wait_for(
            lambda: Delivery.objects.get(pk=old.pk).customer_name == "" and not LocationPing.objects.exists(),
            timeout=30,
            what="the retention job on the worker",
        )
    assert Notification.objects.get(delivery=old).body == ""
