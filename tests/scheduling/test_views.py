from __future__ import annotations

import re
from datetime import datetime, time, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from scheduling.models import Booking, Slot
from scheduling.services import booking_book
from tests.scheduling.factories import make_delivery, make_slot, make_zone
from tracking.models import OutboundEvent

pytestmark = pytest.mark.django_db


def url(delivery) -> str:
    return f"/t/{delivery.tracking_token}/slots/"


def radios(html: str) -> dict[int, str]:
    """slot id -> the whole <input> tag, for every radio named `slot`."""
    return {
        int(m.group(1)): m.group(0)
        for m in re.finditer(r'<input type="radio" name="slot" value="(\d+)"[^>]*>', html)
    }


@pytest.fixture
def zone():
    return make_zone()


def test_the_page_lists_the_zones_slots_as_radios_and_disables_full_and_late_ones(client, zone, settings):
    settings.PORCHLIGHT_BOOKING_CUTOFF_HOURS = 12
    open_slot = make_slot(zone=zone, hours_ahead=30)
    full = make_slot(zone=zone, hours_ahead=34, capacity=0)
    late = make_slot(zone=zone, hours_ahead=6)
    other_zone = make_slot(hours_ahead=30)
    past = make_slot(zone=zone, hours_ahead=-3)
    response = client.get(url(make_delivery(zone=zone)))
    assert response.status_code == 200
    inputs = radios(response.content.decode())
    assert set(inputs) == {open_slot.pk, full.pk, late.pk}
    assert "disabled" not in inputs[open_slot.pk]
    assert "disabled" in inputs[full.pk] and "disabled" in inputs[late.pk]
    assert other_zone.pk not in inputs and past.pk not in inputs
    assert response["Cache-Control"].startswith("max-age=0") or "no-store" in response["Cache-Control"]


def test_slots_are_grouped_by_day_in_the_zones_time_zone(client, zone):
    # 23:30 in Chicago is already the next day in UTC: the day must be Chicago's.
    local_day = timezone.localtime(timezone.now(), zone.tzinfo).date() + timedelta(days=2)
    start = datetime.combine(local_day, time(23, 30), tzinfo=zone.tzinfo)
    make_slot(zone=zone, start=start, length_hours=0.5)
    html = client.get(url(make_delivery(zone=zone))).content.decode()
    assert f'id="day-{local_day:%Y-%m-%d}"' in html
    assert "11:30 p.m. \u2013 midnight" in html


def test_nearly_full_slots_say_few_left_and_the_current_booking_is_marked(client, zone):
    nearly = make_slot(zone=zone, capacity=10)
    Slot.objects.filter(pk=nearly.pk).update(booked=8)
    mine = make_slot(zone=zone, hours_ahead=50)
    delivery = make_delivery(zone=zone)
    booking_book(delivery=delivery, slot_id=mine.pk)
    html = client.get(url(delivery)).content.decode()
    assert "Few left" in html
    assert "checked" in radios(html)[mine.pk]
    assert "Your booking" in html


def test_a_plain_post_books_and_redirects_to_a_confirmation(client, zone):
    slot = make_slot(zone=zone)
    delivery = make_delivery(zone=zone)
    response = client.post(url(delivery), {"slot": slot.pk})
    assert response.status_code == 303
    assert response["Location"] == url(delivery) + "?booked=1"
    page = client.get(response["Location"]).content.decode()
    assert f'data-booked-slot="{slot.pk}"' in page
    assert Booking.objects.get(delivery=delivery).slot == slot


def test_an_htmx_post_answers_with_the_booking_region_only(client, zone):
    slot = make_slot(zone=zone)
    delivery = make_delivery(zone=zone)
    response = client.post(url(delivery), {"slot": slot.pk}, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="booking"')
    assert "<html" not in html
    assert f'data-booked-slot="{slot.pk}"' in html


def test_a_stale_form_posted_after_the_slot_filled_gets_409_and_fresh_availability(client, zone):
    slot = make_slot(zone=zone, capacity=1)
    delivery = make_delivery(zone=zone)
    client.get(url(delivery))  # the form is shown while a place is left...
    booking_book(delivery=make_delivery(zone=zone), slot_id=slot.pk)  # ...and someone takes it
    response = client.post(url(delivery), {"slot": slot.pk})
    html = response.content.decode()
    assert response.status_code == 409
    assert "just filled up" in html
    assert "disabled" in radios(html)[slot.pk]
    htmx = client.post(url(delivery), {"slot": slot.pk}, headers={"HX-Request": "true"})
    assert htmx.status_code == 409 and 'role="alert"' in htmx.content.decode()


def test_a_double_submit_books_once(client, zone):
    slot = make_slot(zone=zone)
    delivery = make_delivery(zone=zone)
    first = client.post(url(delivery), {"slot": slot.pk})
    second = client.post(url(delivery), {"slot": slot.pk})
    assert (first.status_code, second.status_code) == (303, 303)
    slot.refresh_from_db()
    assert slot.booked == 1
    assert OutboundEvent.objects.filter(delivery=delivery).count() == 1


BAD_SLOTS = [None, "", "abc", "-1", "0", "3.5", "9" * 30, str(2**63), "1e3", "1 OR 1=1", "\x00", "x" * 5000]


@pytest.mark.parametrize("bad", BAD_SLOTS)
def test_bad_slot_ids_get_400_with_a_message_and_book_nothing(client, zone, bad):
    make_slot(zone=zone)
    delivery = make_delivery(zone=zone)
    data = {} if bad is None else {"slot": bad}
    response = client.post(url(delivery), data)
    assert response.status_code == 400
    assert "choose one of the delivery times" in response.content.decode()
    assert not Booking.objects.filter(delivery=delivery).exists()


def test_a_slot_of_another_zone_gets_400(client, zone):
    foreign = make_slot(hours_ahead=30)
    response = client.post(url(make_delivery(zone=zone)), {"slot": foreign.pk})
    assert response.status_code == 400
    foreign.refresh_from_db()
    assert foreign.booked == 0


def test_a_post_without_csrf_token_is_forbidden(zone):
    slot = make_slot(zone=zone)
    delivery = make_delivery(zone=zone)
    response = Client(enforce_csrf_checks=True).post(url(delivery), {"slot": slot.pk})
    assert response.status_code == 403
    assert not Booking.objects.filter(delivery=delivery).exists()


def test_a_post_with_the_csrf_token_of_the_page_works(zone):
    slot = make_slot(zone=zone)
    delivery = make_delivery(zone=zone)
    browser = Client(enforce_csrf_checks=True)
    html = browser.get(url(delivery)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    assert browser.post(url(delivery), {"slot": slot.pk, "csrfmiddlewaretoken": token}).status_code == 303


@pytest.mark.parametrize("token", ["nope", "A" * 64, "A" * 65, "%00", "a b", "ñ" * 10])
def test_unknown_tokens_get_the_same_404_page(client, token):
    response = client.get(f"/t/{token}/slots/")
    reference = client.get("/t/unknown-token-xyz/slots/")
    assert response.status_code == 404
    assert response.content == reference.content
    assert client.post(f"/t/{token}/slots/", {"slot": "1"}).status_code == 404


def test_revoked_and_expired_links_get_the_same_404_page(client, zone):
    revoked = make_delivery(zone=zone, token_revoked_at=timezone.now())
    expired = make_delivery(
        zone=zone, status="delivered", status_at=timezone.now() - timezone.timedelta(days=30)
    )
    unknown = client.get("/t/unknown-token-xyz/slots/")
    for delivery in (revoked, expired):
        response = client.get(url(delivery))
        assert (response.status_code, response.content) == (404, unknown.content)


def test_a_token_only_acts_on_its_own_delivery(client, zone):
    slot = make_slot(zone=zone)
    mine, theirs = make_delivery(zone=zone), make_delivery(zone=zone)
    client.post(url(mine), {"slot": slot.pk})
    assert Booking.objects.filter(delivery=mine).exists()
    assert not Booking.objects.filter(delivery=theirs).exists()


def test_the_page_speaks_the_deliverys_language(client, zone):
    slot = make_slot(zone=zone, capacity=0)
    delivery = make_delivery(zone=zone, locale="es-MX")
    page = client.get(url(delivery))
    assert page["Content-Language"] == "es"
    assert "Elija" in page.content.decode()
    refused = client.post(url(delivery), {"slot": slot.pk})
    assert refused.status_code == 409
    assert "lleno" in refused.content.decode()


def test_a_delivery_on_its_way_shows_why_and_offers_no_radio(client, zone):
    slot = make_slot(zone=zone)
    delivery = make_delivery(zone=zone, status="out_for_delivery")
    html = client.get(url(delivery)).content.decode()
    assert "already on its way" in html
    assert "disabled" in radios(html)[slot.pk]
    assert client.post(url(delivery), {"slot": slot.pk}).status_code == 409


def test_a_delivery_without_zone_is_told_there_is_nothing_to_choose(client):
    response = client.get(url(make_delivery(zone=None)))
    assert response.status_code == 200
    assert "no delivery times to choose from" in response.content.decode()


def test_other_methods_are_not_allowed(client, zone):
    assert client.put(url(make_delivery(zone=zone))).status_code == 405


def test_the_page_costs_a_constant_number_of_queries(client, zone, django_assert_max_num_queries):
    for i in range(3):
        make_slot(zone=zone, hours_ahead=20 + i * 3)
    delivery = make_delivery(zone=zone)
    with django_assert_max_num_queries(8) as few:
        client.get(url(delivery))
    for i in range(30):
        make_slot(zone=zone, hours_ahead=40 + i * 3)
    with django_assert_max_num_queries(len(few.captured_queries)):
        client.get(url(delivery))


def test_the_page_keeps_its_url_from_other_sites_but_lets_its_own_form_post(client, zone):
    # Its plain POST then comes with Origin: null, which config.middleware.TokenUrlCsrfMiddleware
    # accepts on token URLs (tests/tracking/test_security_csrf.py, with Chromium).
    response = client.get(url(make_delivery(zone=zone)))
    assert response["Referrer-Policy"] == "no-referrer"
    assert response["X-Robots-Tag"] == "noindex, nofollow"
    assert "script-src 'self' 'nonce-" in response["Content-Security-Policy"]
    assert "unsafe-inline" not in response["Content-Security-Policy"]
    assert "no-store" in response["Cache-Control"]


@pytest.mark.parametrize(
    "body",
    [
        b"slot=" + b"1" * (2 * 1024 * 1024),  # over the 1 MiB body limit
        b"&".join(b"f%d=1" % i for i in range(2000)) + b"&slot=1",  # too many fields
        b"slot=%ff%fe%00",  # not UTF-8
    ],
)
def test_oversized_and_garbled_bodies_get_400_not_500(client, zone, body):
    delivery = make_delivery(zone=zone)
    response = client.post(url(delivery), data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert not Booking.objects.filter(delivery=delivery).exists()


def test_the_confirmation_names_the_day_in_the_customers_language(client, zone):
    local_day = timezone.localtime(timezone.now(), zone.tzinfo).date() + timedelta(days=3)
    slot = make_slot(zone=zone, start=datetime.combine(local_day, time(10), tzinfo=zone.tzinfo))
    delivery = make_delivery(zone=zone, locale="es")
    page = client.get(client.post(url(delivery), {"slot": slot.pk})["Location"]).content.decode()
    months = ["enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre",
              "octubre", "noviembre", "diciembre"]  # fmt: skip
    assert "Reservado: " in page
    assert f"{local_day.day} de {months[local_day.month - 1]} de {local_day.year}, 10:00 \u2013 12:00" in page
