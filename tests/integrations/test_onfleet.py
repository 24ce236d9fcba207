"""`/api/v1/integrations/onfleet/`: the handshake, and every trigger mapped through the native
intake (asserted on the delivery and its timeline of native events)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import signed_post
from tests.integrations.conftest import ONFLEET_URL, post_onfleet, recorded
from tests.tracking.intake_events import upserted
from tracking.models import Delivery, DeliveryProof, InboundEvent, PayloadOutcome, ProviderPayload

pytestmark = pytest.mark.django_db

TASK = "kT3~zq9PbN1fZp0*rLm4sWx2"
WORKER = "onfleet:h8Yf~2QmTz4LkR7*xNc3Vb1w"
T0 = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def post(client, name_or_body: str | dict[str, Any]) -> dict[str, Any]:
    body = recorded("onfleet", name_or_body) if isinstance(name_or_body, str) else name_or_body
    response = post_onfleet(client, body)
    assert response.status_code == 200, response.content[:500]
    return response.json()


def delivery(reference: str = TASK) -> Delivery:
    return Delivery.objects.select_related("driver").get(reference=reference)


def timeline(reference: str = TASK, *, upserts: bool = False) -> list[tuple[str, str, str]]:
    """The delivery's history as the native intake recorded it: (type, status or "", result),
    without the upserts that most triggers carry unless asked for."""
    rows = InboundEvent.objects.filter(delivery__reference=reference).order_by("occurred_at", "pk")
    return [
        (r.type, r.payload["data"].get("status", ""), r.result)
        for r in rows
        if upserts or r.type != "delivery.upserted"
    ]


# --- the registration handshake ------------------------------------------------------------


def test_the_handshake_answers_200_with_exactly_the_check_value(client):
    response = client.get(ONFLEET_URL, {"check": "q9Zl0~x*Y"})
    assert response.status_code == 200
    assert response.content == b"q9Zl0~x*Y"
    assert response["Content-Type"].startswith("text/plain")
    assert response["X-Content-Type-Options"] == "nosniff"


def test_the_handshake_echoes_markup_as_plain_text_only(client):
    response = client.get(ONFLEET_URL, {"check": "<script>alert(1)</script>"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize("query", [{}, {"check": ""}, {"check": "x" * 1025}])
def test_a_get_without_a_usable_check_is_400(client, query):
    assert client.get(ONFLEET_URL, query).status_code == 400


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_other_methods_are_405(client, method):
    assert getattr(client, method)(ONFLEET_URL).status_code == 405


# --- every trigger --------------------------------------------------------------------------


def test_task_created_creates_the_delivery_from_recipient_destination_and_window(client):
    [result] = post(client, "task_created")["results"]
    assert result["result"] == "accepted" and result["tracking_url"].startswith("http://testserver/t/")
    d = delivery()
    assert (d.customer_name, d.phone) == ("Ana García", "+19565550123")
    assert (d.address_line1, d.address_line2, d.city, d.postcode, d.country) == (
        "1201 Matamoros St", "Apt 4", "Laredo", "78040", "US",
    )  # fmt: skip
    assert (d.lat, d.lon) == (27.5036, -99.5075)  # location is [lng, lat]
    assert (d.window_start, d.window_end) == (at(60), at(180))
    assert d.timezone == "America/Chicago"  # from the recipient's area code
    assert d.status == "created"
    assert timeline(upserts=True) == [("delivery.upserted", "", "accepted")]


def test_task_updated_changes_the_details(client):
    post(client, "task_created")
    post(client, "task_updated")
    assert delivery().address_line2 == "Apt 5"
    assert timeline(upserts=True) == [("delivery.upserted", "", "accepted")] * 2


def test_task_assigned_names_the_driver(client):
    post(client, "task_created")
    post(client, "task_assigned")
    d = delivery()
    assert d.status == "scheduled"
    assert (d.driver.external_id, d.driver.name) == (WORKER, "Luis Treviño")


def test_task_started_is_out_for_delivery(client):
    post(client, "task_created")
    post(client, "task_started")
    d = delivery()
    assert (d.status, d.status_at, d.driver.external_id) == ("out_for_delivery", at(60), WORKER)
    assert timeline()[-1] == ("delivery.status", "out_for_delivery", "accepted")


def test_task_eta_sets_the_eta_from_eta_seconds(client):
    post(client, "task_created")
    post(client, "task_eta")
    assert delivery().eta == at(90) + timedelta(seconds=600)
    assert timeline()[-1] == ("delivery.eta", "", "accepted")


def test_task_delayed_moves_the_eta_past_the_window_by_the_delay(client):
    post(client, "task_created")
    post(client, "task_delayed")
    d = delivery()
    assert d.eta == at(180) + timedelta(seconds=1800)  # completeBefore + delay
    assert d.eta > d.window_end


def test_task_arrival_is_arriving(client):
    post(client, "task_created")
    post(client, "task_arrival")
    assert delivery().status == "arriving"


def test_task_completed_with_success_is_delivered_at_the_completion_time(client):
    post(client, "task_created")
    post(client, "task_completed")
    d = delivery()
    assert (d.status, d.status_at) == ("delivered", at(110))
    # Onfleet gives photo upload ids, not URLs: without a template there is no native proof.
    assert not DeliveryProof.objects.exists()


def test_task_completed_gives_a_proof_with_notes_and_recipient_when_photos_have_a_url(client, settings):
    settings.ONFLEET_PHOTO_URL_TEMPLATE = "https://photos.example.com/{id}/800x.png"
    post(client, "task_created")
    post(client, "task_completed")
    proof = DeliveryProof.objects.get(delivery=delivery())
    assert proof.photo_url == "https://photos.example.com/b5OuQ7t9d1zk5lbqgPyzM3rQ/800x.png"
    assert (proof.recipient_name, proof.note) == ("Rosa Díaz", "Left with the neighbour at 1203")
    assert sorted(timeline()[-2:]) == [
        ("delivery.proof", "", "accepted"),
        ("delivery.status", "delivered", "accepted"),
    ]


def test_task_completed_without_success_is_a_failed_attempt_with_its_reason(client):
    post(client, "task_created")
    post(client, "task_completed_unsuccessful")
    d = delivery()
    assert (d.status, d.status_reason) == ("attempt_failed", "NOBODY_HOME: Rang twice")


def test_task_failed_is_a_failed_attempt_with_its_reason(client):
    post(client, "task_created")
    post(client, "task_failed")
    d = delivery()
    assert (d.status, d.status_reason) == ("attempt_failed", "INCORRECT_ADDRESS: No such number")


def test_task_deleted_cancels_the_delivery(client):
    post(client, "task_created")
    post(client, "task_deleted")
    assert delivery().status == "cancelled"


def test_task_unassigned_keeps_the_status(client):
    post(client, "task_created")
    post(client, "task_assigned")
    post(client, "task_unassigned")
    assert delivery().status == "scheduled"
    assert ProviderPayload.objects.get(kind="taskUnassigned").outcome == PayloadOutcome.APPLIED


def test_task_cloned_creates_the_clone_as_its_own_delivery(client):
    post(client, "task_created")
    post(client, "task_cloned")
    assert delivery("cL0n3dTask~AbCdEfGh*1234").customer_name == "Ana García"
    assert Delivery.objects.count() == 2


@pytest.mark.parametrize("name", ["worker_duty", "unknown_trigger"])
def test_triggers_porchlight_does_not_map_are_acknowledged_and_recorded(client, name):
    body = post(client, name)
    assert body["outcome"] == "ignored" and body["results"] == []
    payload = ProviderPayload.objects.get()
    assert payload.outcome == PayloadOutcome.IGNORED and payload.error
    assert not Delivery.objects.exists()


def test_the_whole_day_of_a_task_reads_as_one_timeline(client):
    for name in (
        "task_created",
        "task_assigned",
        "task_started",
        "task_eta",
        "task_arrival",
        "task_completed",
    ):
        post(client, name)
    statuses = [status for kind, status, _ in timeline() if kind == "delivery.status"]
    assert statuses == ["scheduled", "out_for_delivery", "arriving", "delivered"]
    assert delivery().status == "delivered"
    assert ProviderPayload.objects.filter(outcome=PayloadOutcome.APPLIED).count() == 6


# --- the shared intake: idempotency, order, pending ----------------------------------------


def test_the_same_payload_twice_has_one_effect(client):
    post(client, "task_created")
    first = post(client, "task_started")
    again = post(client, "task_started")
    assert (first["received"], again["received"]) == ("new", "again")
    assert timeline().count(("delivery.status", "out_for_delivery", "accepted")) == 1
    payload = ProviderPayload.objects.get(kind="taskStarted")
    assert payload.times_received == 2


def test_a_late_trigger_does_not_undo_a_newer_one(client):
    post(client, "task_created")
    post(client, "task_completed")
    post(client, "task_started")  # delivered before, arrives after
    assert delivery().status == "delivered"
    assert ("delivery.status", "out_for_delivery", "stale") in timeline()


def test_a_trigger_for_a_task_not_known_yet_waits_for_its_creation(client):
    started = recorded("onfleet", "task_started")
    for key in ("recipients", "destination"):
        del started["data"]["task"][key]  # a partial task: no details to create the delivery from
    [result] = post(client, started)["results"]
    assert result["result"] == "pending"
    post(client, "task_created")
    assert delivery().status == "out_for_delivery"


def test_a_delivery_created_natively_and_updated_by_onfleet_is_one_delivery(client):
    native = upserted(TASK, id="shop-1", zone="laredo-central", items=3)
    native["data"]["customer"]["locale"] = "es"
    assert signed_post(client, native).status_code == 200
    token = delivery().tracking_token
    post(client, "task_updated")
    post(client, "task_started")
    d = delivery()
    assert Delivery.objects.count() == 1
    assert d.tracking_token == token
    assert (d.address_line2, d.status) == ("Apt 5", "out_for_delivery")
    # What Onfleet does not know is kept: the shop's zone, item count, language and email.
    assert (d.zone_code, d.items, d.locale, d.email) == ("laredo-central", 3, "es", "ana@example.com")


def test_a_task_without_recipients_details_is_recorded_as_rejected_yet_answered_200(client):
    created = recorded("onfleet", "task_created")
    created["data"]["task"]["recipients"] = []
    created["data"]["task"]["destination"]["address"] = {}
    body = post(client, created)
    assert body["outcome"] == "rejected"
    assert body["results"][0]["result"] == "rejected"
    assert ProviderPayload.objects.get().outcome == PayloadOutcome.REJECTED


def test_a_recipient_phone_without_a_single_time_zone_uses_the_fallback(client, settings):
    settings.INTEGRATIONS_TIMEZONE = "America/Mexico_City"
    created = copy.deepcopy(recorded("onfleet", "task_created"))
    created["data"]["task"]["recipients"][0]["phone"] = "+525512345678"
    created["data"]["task"]["destination"]["address"]["country"] = "México"
    post(client, created)
    d = delivery()
    assert (d.country, d.timezone) in {("MX", "America/Mexico_City")}


def test_a_clone_is_its_own_delivery_even_when_the_trigger_names_the_source_task(client):
    post(client, "task_created")
    cloned = recorded("onfleet", "task_cloned")
    cloned["taskId"] = TASK
    post(client, cloned)
    assert set(Delivery.objects.values_list("reference", flat=True)) == {TASK, "cL0n3dTask~AbCdEfGh*1234"}
    assert delivery().address_line2 == "Apt 4"  # the source task is untouched


def test_the_customer_follows_an_onfleet_task_on_the_usual_tracking_page(client):
    [result] = post(client, "task_created")["results"]
    post(client, "task_started")
    page = client.get(result["tracking_url"].removeprefix("http://testserver"))
    assert page.status_code == 200
    assert 'data-status="out_for_delivery"' in page.content.decode()
