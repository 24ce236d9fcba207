"""Ordering and idempotency of the intake: last writer wins, stale, pending, pings."""

from __future__ import annotations

import pytest

from tests.tracking.intake_events import (
    at,
    eta,
    ping,
    proof,
    status,
    upserted,
)
from tests.tracking.test_intake import one, results_of
from tracking.models import Delivery, Driver, InboundEvent, LocationPing

pytestmark = pytest.mark.django_db

# --- ordering: last writer wins, stale, pending ------------------------------------------


def test_the_newest_status_wins_and_an_older_one_arriving_late_is_stale(post_events):
    one(post_events, upserted("ORD-L"))
    assert one(post_events, status("ORD-L", "arriving", minutes=20))["result"] == "accepted"
    assert one(post_events, status("ORD-L", "out_for_delivery", minutes=10))["result"] == "stale"
    delivery = Delivery.objects.get()
    assert delivery.status == "arriving"
    history = InboundEvent.objects.filter(delivery=delivery, type="delivery.status").order_by("occurred_at")
    assert [(e.payload["data"]["status"], e.result) for e in history] == [
        ("out_for_delivery", "stale"),
        ("arriving", "accepted"),
    ]


def test_a_tie_on_occurred_at_goes_to_the_later_received_request(post_events):
    one(post_events, upserted("ORD-TIE"))
    one(post_events, status("ORD-TIE", "arriving", minutes=10))
    assert one(post_events, status("ORD-TIE", "attempt_failed", minutes=10))["result"] == "accepted"
    assert Delivery.objects.get().status == "attempt_failed"


def test_a_tie_inside_one_batch_goes_to_the_later_event(post_events):
    items = [
        upserted("ORD-TB"),
        status("ORD-TB", "arriving", minutes=10),
        status("ORD-TB", "delivered", minutes=10),
    ]
    assert [r["result"] for r in results_of(post_events({"events": items}))] == ["accepted"] * 3
    assert Delivery.objects.get().status == "delivered"


PAIRS = [
    (lambda: upserted("ORD-O", minutes=30, zone="new"), lambda: upserted("ORD-O", minutes=20, zone="old")),
    (lambda: status("ORD-O", "arriving", minutes=30), lambda: status("ORD-O", "scheduled", minutes=20)),
    (lambda: eta("ORD-O", minutes=30, eta_minutes=95, stops_before=1),
     lambda: eta("ORD-O", minutes=20, eta_minutes=150, stops_before=9)),
    (lambda: proof("ORD-O", minutes=30, note="new"), lambda: proof("ORD-O", minutes=20, note="old")),
]  # fmt: skip


def _assert_newest_kept() -> None:
    delivery = Delivery.objects.get()
    assert (delivery.zone_code, delivery.status, delivery.stops_before, delivery.proof.note) == (
        "new",
        "arriving",
        1,
        "new",
    )
    assert delivery.eta.isoformat() == at(95)


def test_out_of_order_pairs_of_every_kind_keep_the_newest_and_the_late_one_is_stale(post_events):
    one(post_events, upserted("ORD-O", minutes=0))
    for newer, older in PAIRS:
        assert one(post_events, newer())["result"] == "accepted"
        assert one(post_events, older())["result"] == "stale"
    _assert_newest_kept()
    assert InboundEvent.objects.filter(result="stale").count() == 4  # kept in the history


def test_out_of_order_pairs_inside_one_batch_are_applied_in_occurred_at_order(post_events):
    """Within one request nothing arrives late: the pair is replayed oldest first, so both
    apply and the newest is what stays."""
    one(post_events, upserted("ORD-O", minutes=0))
    for newer, older in PAIRS:
        assert [r["result"] for r in results_of(post_events({"events": [newer(), older()]}))] == [
            "accepted"
        ] * 2
    _assert_newest_kept()


def test_a_late_ping_is_kept_in_the_trail_but_never_moves_the_marker_back(post_events):
    one(post_events, ping("drv_9", minutes=10, lat=10.0))
    assert one(post_events, ping("drv_9", minutes=5, lat=5.0))["result"] == "accepted"
    driver = Driver.objects.get(external_id="drv_9")
    assert (driver.lat, driver.position_recorded_at.isoformat()) == (10.0, at(10))
    assert sorted(LocationPing.objects.values_list("lat", flat=True)) == [5.0, 10.0]


def test_pings_in_one_batch_move_the_marker_to_the_newest_whatever_their_order(post_events):
    results_of(post_events({"events": [ping("drv_8", minutes=m, lat=float(m)) for m in (3, 9, 1, 7)]}))
    assert Driver.objects.get(external_id="drv_8").lat == 9.0
    assert LocationPing.objects.count() == 4


def test_events_for_an_unknown_reference_are_pending_and_kept(post_events):
    result = one(post_events, status("ORD-P", "arriving"))
    assert result["result"] == "pending"
    assert InboundEvent.objects.get().result == "pending"
    assert not Delivery.objects.exists()


def test_pending_events_are_applied_in_occurred_at_order_when_the_upsert_arrives_later(post_events):
    # Newest first: applied in arrival order, the older would overwrite the newer.
    later = [
        status("ORD-PL", "arriving", minutes=30, id="p-new"),
        status("ORD-PL", "out_for_delivery", minutes=10, id="p-old"),
        eta("ORD-PL", minutes=25, stops_before=1, id="p-eta"),
    ]
    assert [r["result"] for r in results_of(post_events({"events": later}))] == ["pending"] * 3
    assert one(post_events, upserted("ORD-PL", minutes=0))["result"] == "accepted"
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.stops_before) == ("arriving", 1)
    rows = dict(InboundEvent.objects.values_list("event_id", "result"))
    assert (rows["p-new"], rows["p-old"], rows["p-eta"]) == ("accepted", "accepted", "accepted")
    assert set(InboundEvent.objects.values_list("delivery_id", flat=True)) == {delivery.pk}


def test_pending_and_upsert_in_the_same_batch_are_applied_in_occurred_at_order(post_events):
    items = [status("ORD-PS", "arriving", minutes=30), status("ORD-PS", "out_for_delivery", minutes=10),
             upserted("ORD-PS", minutes=40)]  # fmt: skip
    results = results_of(post_events({"events": items}))
    assert [r["result"] for r in results] == ["accepted"] * 3 and "tracking_url" in results[2]
    assert Delivery.objects.get().status == "arriving"


def test_pending_from_an_earlier_request_and_new_events_merge_in_occurred_at_order(post_events):
    one(post_events, status("ORD-PM", "arriving", minutes=30))
    results = results_of(
        post_events({"events": [upserted("ORD-PM"), status("ORD-PM", "out_for_delivery", minutes=20)]})
    )
    # The pending "arriving" (30) is applied after this batch's "out_for_delivery" (20).
    assert [r["result"] for r in results] == ["accepted", "accepted"]
    assert Delivery.objects.get().status == "arriving"
    assert not InboundEvent.objects.filter(result="pending").exists()


def test_a_pending_event_stays_kept_until_its_delivery_appears(post_events):
    one(post_events, status("ORD-WAIT", "delivered"))
    one(post_events, upserted("ORD-OTHER"))
    assert InboundEvent.objects.get(reference="ORD-WAIT").result == "pending"


def test_the_contract_examples_apply_to_the_documented_state(post_events, contract_examples):
    results = results_of(post_events({"events": contract_examples["inbound"]}))
    assert [r["result"] for r in results] == ["accepted"] * 7 + ["pending"]
    delivery = Delivery.objects.get(reference="ORD-10023")
    assert (delivery.status, delivery.stops_before, delivery.driver.name) == ("delivered", 6, "Sam Ortiz")
    assert bytes(delivery.proof.photo).startswith(b"\x89PNG")


def test_a_batch_writes_each_delivery_it_changed_once_with_every_change(post_events):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    references = ["ORD-W-1", "ORD-W-2", "ORD-W-3"]
    results_of(post_events({"events": [upserted(r) for r in references]}))
    before = {d.reference: d.updated_at for d in Delivery.objects.all()}
    items = [
        item
        for r in references
        for item in (
            upserted(r, minutes=5, zone="zone-new"),
            status(r, "out_for_delivery", minutes=6),
            eta(r, minutes=7, eta_minutes=95, stops_before=2),
        )
    ]
    with CaptureQueriesContext(connection) as queries:
        assert [r["result"] for r in results_of(post_events({"events": items}))] == ["accepted"] * 9
    # One statement on PostgreSQL; on SQLite one executemany, logged as "3 times: UPDATE ...".
    updates = [q["sql"] for q in queries if 'UPDATE "tracking_delivery"' in q["sql"]]
    assert len(updates) == 1, updates
    for delivery in Delivery.objects.filter(reference__in=references):
        changed = (delivery.zone_code, delivery.status, delivery.stops_before)
        assert changed == ("zone-new", "out_for_delivery", 2)
        assert delivery.eta is not None and delivery.updated_at > before[delivery.reference]
