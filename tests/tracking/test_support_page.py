"""The support desk's delivery page: status, ETA and window, slot, driver with the age of its
position and a small map, the link, consent, and one chronological timeline of everything,
in a bounded number of queries."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications.models import Consent, InboundMessage, Notification, Preference
from scheduling.models import BookedBy
from scheduling.services import booking_book
from tests.scheduling.factories import make_slot, make_zone
from tests.tracking.support_factories import logged_in, make_delivery, make_driver, page_url, support_user
from tracking.models import EventResult, InboundEvent, OutboundEvent, OutboundStatus, SupportAction
from tracking.support_page import delivery_timeline, small_map

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent() -> Client:
    return logged_in(support_user())


def add_history(delivery, *, n: int = 1, start=None) -> None:
    """n of each kind of history entry, every one a distinct row."""
    at = start or timezone.now() - timedelta(hours=3)
    for i in range(n):
        InboundEvent.objects.create(
            event_id=f"evt-{delivery.pk}-{i}-{InboundEvent.objects.count()}",
            type="delivery.status",
            occurred_at=at + timedelta(minutes=i),
            reference=delivery.reference,
            delivery=delivery,
            payload={"data": {"status": "out_for_delivery", "reference": delivery.reference}},
            result=EventResult.ACCEPTED,
            received_at=at,
        )
        Notification.objects.create(
            delivery=delivery,
            channel="sms",
            kind="out_for_delivery",
            recipient=delivery.phone,
            body="On its way",
            dedupe_key=f"{delivery.pk}:h:{i}:{Notification.objects.count()}",
            status="undelivered",
            error_code="30003",
            last_error="Unreachable handset",
            next_attempt_at=at,
        )
        OutboundEvent.objects.create(
            event_id=f"pl_{delivery.pk}_{i}_{OutboundEvent.objects.count()}",
            type="delivery.instructions",
            delivery=delivery,
            data={"instructions": "Leave at the back door"},
            occurred_at=at,
            next_attempt_at=at,
            status=OutboundStatus.FAILED,
            last_error="HTTP 503",
        )
        InboundMessage.objects.create(
            sender=delivery.phone, body="where is it?", action="review", needs_review=True, received_at=at
        )
        SupportAction.objects.create(
            delivery=delivery,
            kind="note",
            username="earlier",
            text=f"note {i}",
            nonce=f"n-{delivery.pk}-{i}-{SupportAction.objects.count()}",
            at=at,
        )


def test_the_page_shows_status_eta_window_slot_driver_link_and_consent(agent: Client) -> None:
    zone = make_zone(code="laredo-page")
    slot = make_slot(zone=zone)
    driver = make_driver(lat=27.51, lon=-99.50, position_recorded_at=timezone.now() - timedelta(minutes=3))
    delivery = make_delivery(
        zone_code=zone.code,
        driver=driver,
        status="scheduled",
        eta=timezone.now() + timedelta(hours=3),
        customer_name="María José Peña",
    )
    booking_book(delivery=delivery, slot_id=slot.pk)
    Consent.objects.create(
        channel="sms", address=delivery.phone, opted_out=True, reason="STOP", changed_at=timezone.now()
    )
    html = agent.get(page_url(delivery)).content.decode()
    assert "María José Peña" in html and "Scheduled" in html
    assert str(slot) in html  # the booked slot
    assert "Sam Driver" in html and "3\xa0minutes ago" in html
    assert f"/t/{delivery.tracking_token}/" in html
    assert f'sms {delivery.phone}: <span class="support-problem">opted out (STOP' in html
    assert "email customer" in html and ': <span class="">allowed</span>' in html
    assert re.search(r'<circle cx="[\d.]+" cy="[\d.]+" r="6" fill="#0969da">', html)  # the driver on the map
    assert "<script" not in html.split('id="support-desk"')[1].split("</section>")[0]


def test_the_timeline_merges_every_source_in_chronological_order(agent: Client) -> None:
    zone = make_zone(code="laredo-timeline")
    delivery = make_delivery(zone_code=zone.code)
    booking_book(delivery=delivery, slot_id=make_slot(zone=zone).pk, by=BookedBy.STAFF, staff_user="alice")
    add_history(delivery, n=2)
    items = delivery_timeline(delivery=delivery)
    assert [item.at for item in items] == sorted(item.at for item in items)
    sources = {item.source for item in items}
    assert sources >= {"routing", "message", "customer", "staff", "outbox"}
    message = next(item for item in items if item.source == "message" and item.status == "undelivered")
    assert "30003" in message.error and "Unreachable handset" in message.error and message.problem
    assert any(item.source == "staff" and item.actor == "alice" and "booked" in item.title for item in items)
    html = agent.get(page_url(delivery)).content.decode()
    assert "Unreachable handset" in html and "Leave at the back door" in html and "note 1" in html


def test_the_page_runs_a_bounded_number_of_queries_however_long_the_history(agent: Client) -> None:
    delivery = make_delivery(driver=make_driver(lat=27.5, lon=-99.5, position_recorded_at=timezone.now()))
    Preference.objects.create(delivery=delivery, sms=False)
    add_history(delivery, n=1)

    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert agent.get(page_url(delivery)).status_code == 200
        return len(captured)

    few = count()
    add_history(delivery, n=30)
    assert count() == few


def test_the_small_map_places_the_driver_by_bearing_and_keeps_it_in_the_box() -> None:
    delivery = make_delivery(lat=27.5, lon=-99.5)
    assert small_map(delivery).driver is None
    north = make_delivery(lat=27.5, lon=-99.5, driver=make_driver(lat=27.51, lon=-99.5))
    far_east = make_delivery(lat=27.5, lon=-99.5, driver=make_driver(lat=27.5, lon=-90.0))
    n, e = small_map(north), small_map(far_east)
    assert n.driver is not None and e.driver is not None
    assert n.driver.x == 100 and n.driver.y < 100 and 1000 < (n.distance_m or 0) < 1200
    assert e.driver.x > 100 and 20 <= e.driver.x <= 180 and e.driver.y == 100


def test_a_missing_or_malformed_delivery_id_is_not_a_5xx(agent: Client) -> None:
    for object_id in ("999999", "abc", "1" * 40, "%00", "-1"):
        assert agent.get(f"/admin/tracking/delivery/{object_id}/change/").status_code in (302, 404)


def test_times_are_shown_in_the_customers_time_zone_and_a_bad_zone_is_no_5xx(agent: Client) -> None:
    from datetime import UTC, datetime

    start = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)  # 14:00 in Laredo (UTC-6)
    delivery = make_delivery(
        window_start=start, window_end=start + timedelta(hours=2), timezone="America/Chicago"
    )
    html = agent.get(page_url(delivery)).content.decode()
    assert "Tue 1 Dec 14:00 to 16:00 customer's time (America/Chicago; 20:00 to 22:00 UTC)" in html
    broken = make_delivery(window_start=start, window_end=start + timedelta(hours=2), timezone="Not/AZone")
    assert agent.get(page_url(broken)).status_code == 200


def test_an_eta_event_reads_as_a_utc_clock_and_a_malformed_one_is_no_5xx(agent: Client) -> None:
    delivery = make_delivery()
    now = timezone.now()
    for n, eta in enumerate(["2026-12-01T14:05:00-06:00", "not a date", None, 12]):
        InboundEvent.objects.create(
            event_id=f"evt-eta-{n}",
            type="delivery.eta",
            occurred_at=now,
            reference=delivery.reference,
            delivery=delivery,
            payload={"data": {"eta": eta}},
            result=EventResult.ACCEPTED,
            received_at=now,
        )
    InboundEvent.objects.create(
        event_id="evt-odd",
        type="delivery.status",
        occurred_at=now,
        reference=delivery.reference,
        delivery=delivery,
        payload=["not", "a", "dict"],
        result=EventResult.REJECTED,
        received_at=now,
    )
    titles = [item.title for item in delivery_timeline(delivery=delivery) if item.source == "routing"]
    assert "ETA 20:05 UTC" in titles
    assert agent.get(page_url(delivery)).status_code == 200
