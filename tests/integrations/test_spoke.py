"""`/api/v1/integrations/spoke/`: every event type mapped through the native intake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integrations.conftest import SPOKE_URL, post_spoke, recorded
from tracking.integrations.spoke import split_address
from tracking.models import Delivery, DeliveryProof, InboundEvent, PayloadOutcome, ProviderPayload

pytestmark = pytest.mark.django_db

STOP = "plans/zeOCJaJCzZhpKVCVAC9o/stops/rpX5zK2kRFlIfwREp1js"
DRIVER = "spoke:drivers/Qm7TzLkR4xNc3Vb1wH8Y"
T0 = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def post(client, name_or_body: str | dict[str, Any]) -> dict[str, Any]:
    body = recorded("spoke", name_or_body) if isinstance(name_or_body, str) else name_or_body
    response = post_spoke(client, body)
    assert response.status_code == 200, response.content[:500]
    return response.json()


def delivery() -> Delivery:
    return Delivery.objects.select_related("driver").get(reference=STOP)


def statuses() -> list[tuple[str, str]]:
    rows = InboundEvent.objects.filter(delivery__reference=STOP, type="delivery.status").order_by(
        "occurred_at"
    )
    return [(r.payload["data"]["status"], r.result) for r in rows]


def test_the_first_stop_event_creates_the_delivery_from_the_stop(client):
    [upsert, eta] = post(client, "stop_tracking_link_added")["results"]
    assert (upsert["result"], eta["result"]) == ("accepted", "accepted")
    d = delivery()
    assert (d.customer_name, d.phone, d.email) == ("Jorge Peña", "+19565550199", "jorge@example.com")
    assert (d.address_line1, d.city, d.postcode, d.country) == (
        "2310 San Bernardo Ave",
        "Laredo",
        "78040",
        "US",
    )
    assert (d.lat, d.lon, d.timezone) == (27.5219, -99.5004, "America/Chicago")
    # eta {eta, earliestTime, latestTime} in epoch seconds: the ETA and its window
    assert (d.eta, d.eta_window_start, d.eta_window_end) == (at(5400), at(4800), at(6000))
    assert d.status == "created"


def test_stop_allocated_schedules_it_with_the_driver(client):
    post(client, "stop_allocated")
    d = delivery()
    assert d.status == "scheduled"
    assert (d.driver.external_id, d.driver.name) == (DRIVER, "Marta Ruiz")


def test_stop_out_for_delivery_is_out_for_delivery_with_a_new_eta(client):
    post(client, "stop_allocated")
    post(client, "stop_out_for_delivery")
    d = delivery()
    assert (d.status, d.status_at, d.eta) == ("out_for_delivery", T0 + timedelta(minutes=60), at(5700))


def test_stop_next_in_route_means_no_stop_before_this_one(client):
    post(client, "stop_out_for_delivery")
    post(client, "stop_next_in_route")
    d = delivery()
    assert (d.status, d.stops_before, d.eta) == ("out_for_delivery", 0, at(5900))
    assert (d.eta_window_start, d.eta_window_end) == (at(5600), at(6200))
    assert d.shows_live_position(live_map_stops=3)


def test_stop_attempted_delivery_that_succeeded_is_delivered_with_its_proof(client):
    post(client, "stop_out_for_delivery")
    post(client, "stop_attempted_delivery")
    d = delivery()
    assert (d.status, d.status_at) == ("delivered", at(6000))  # deliveryInfo.attemptedAt
    proof = DeliveryProof.objects.get(delivery=d)
    # The photo is referenced, never fetched.
    assert proof.photo_url == "https://storage.spoke.example/pod/9Xk2Lq/photo-1.jpg"
    assert proof.photo is None
    assert (proof.recipient_name, proof.note) == ("Jorge Peña", "Handed to Jorge")


def test_stop_attempted_delivery_that_failed_is_a_failed_attempt_with_its_reason(client):
    post(client, "stop_out_for_delivery")
    post(client, "stop_attempted_delivery_failed")
    d = delivery()
    assert (d.status, d.status_reason) == ("attempt_failed", "not home: Nobody answered")
    assert not DeliveryProof.objects.exists()


def test_stop_departed_after_the_attempt_changes_nothing_more(client):
    post(client, "stop_out_for_delivery")
    post(client, "stop_attempted_delivery")
    post(client, "stop_departed")
    assert delivery().status == "delivered"
    assert statuses() == [
        ("out_for_delivery", "accepted"),
        ("delivered", "accepted"),
        ("delivered", "accepted"),
    ]


@pytest.mark.parametrize("name", ["test_send_event", "unknown_type"])
def test_the_test_event_and_unknown_types_are_acknowledged_and_recorded(client, name):
    body = post(client, name)
    assert (body["outcome"], body["results"]) == ("ignored", [])
    assert ProviderPayload.objects.get().outcome == PayloadOutcome.IGNORED
    assert not Delivery.objects.exists()


def test_the_same_event_twice_has_one_effect(client):
    post(client, "stop_allocated")
    again = post(client, "stop_allocated")
    assert again["received"] == "again"
    assert statuses() == [("scheduled", "accepted")]
    assert ProviderPayload.objects.get().times_received == 2


def test_a_late_event_does_not_undo_a_newer_one(client):
    post(client, "stop_attempted_delivery")
    post(client, "stop_out_for_delivery")
    assert delivery().status == "delivered"
    assert ("out_for_delivery", "stale") in statuses()


def test_a_whole_stop_reads_as_one_timeline(client):
    for name in ("stop_tracking_link_added", "stop_allocated", "stop_out_for_delivery", "stop_next_in_route"):
        post(client, name)
    post(client, "stop_attempted_delivery")
    assert [s for s, _ in statuses()] == ["scheduled", "out_for_delivery", "out_for_delivery", "delivered"]
    assert Delivery.objects.count() == 1


def test_a_get_is_405(client):
    assert client.get(SPOKE_URL).status_code == 405


@pytest.mark.parametrize(
    ("full", "line_one", "expected"),
    [
        (
            "2310 San Bernardo Ave, Laredo, TX 78040, USA",
            "",
            ("2310 San Bernardo Ave", "Laredo", "78040", "US"),
        ),
        (
            "Very nice St., 150 - Nice Neighbourhood, Campinas - SP, 130876, Brazil",
            "Very nice St., 150",
            ("Very nice St., 150", "Campinas", "130876", "BR"),
        ),
        ("Unter den Linden 1, 10117 Berlin, Germany", "", ("Unter den Linden 1", "Berlin", "10117", "DE")),
        ("10 Downing St, London SW1A 2AA, UK", "", ("10 Downing St", "London", "SW1A 2AA", "GB")),
        ("Main Street 5, Dublin, Ireland", "", ("Main Street 5", "Dublin", "-", "IE")),
        ("", "", ("", "", "-", "")),
    ],
)
def test_a_one_line_address_is_split_into_the_contracts_fields(full, line_one, expected):
    assert split_address(full, line_one) == expected


def test_a_phone_number_the_intake_would_refuse_is_left_out_and_the_email_kept(client):
    body = recorded("spoke", "stop_allocated")
    body["data"]["recipient"]["phone"] = "call the front desk"
    post(client, body)
    d = delivery()
    assert (d.phone, d.email, d.status) == ("", "jorge@example.com", "scheduled")
