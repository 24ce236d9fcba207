"""The slot page in a real Chromium: htmx swaps the confirmation in place, and the same
form still works with JavaScript off."""

from __future__ import annotations

import pytest

from scheduling.models import Booking
from scheduling.services import booking_book
from tests.scheduling.factories import make_delivery, make_slot, make_zone

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_booking_with_htmx_swaps_the_confirmation_in_place(live_server, page):
    zone = make_zone()
    slot = make_slot(zone=zone)
    delivery = make_delivery(zone=zone)
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(f"{live_server.url}/t/{delivery.tracking_token}/slots/")
    page.wait_for_function("window.htmx !== undefined")
    page.evaluate("window.__sameDocument = true")
    page.check(f'input[name="slot"][value="{slot.pk}"]')
    page.click("button[type=submit]")
    page.wait_for_selector(f'[data-booked-slot="{slot.pk}"]')
    assert page.evaluate("window.__sameDocument") is True  # swapped, not reloaded
    assert not [line for line in console if "Content Security Policy" in line]
    assert Booking.objects.get(delivery=delivery).slot == slot


def test_a_slot_that_filled_meanwhile_is_explained_in_place(live_server, page):
    zone = make_zone()
    slot = make_slot(zone=zone, capacity=1)
    delivery = make_delivery(zone=zone)
    page.goto(f"{live_server.url}/t/{delivery.tracking_token}/slots/")
    page.wait_for_function("window.htmx !== undefined")
    booking_book(delivery=make_delivery(zone=zone), slot_id=slot.pk)
    page.check(f'input[name="slot"][value="{slot.pk}"]')
    page.click("button[type=submit]")
    alert = page.wait_for_selector('[role="alert"]')
    assert "just filled up" in alert.inner_text()
    assert page.is_disabled(f'input[name="slot"][value="{slot.pk}"]')


def test_the_form_works_without_javascript(live_server, browser):
    zone = make_zone()
    slot = make_slot(zone=zone)
    delivery = make_delivery(zone=zone, locale="es")
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(f"{live_server.url}/t/{delivery.tracking_token}/slots/")
        page.check(f'input[name="slot"][value="{slot.pk}"]')
        page.click("button[type=submit]")
        page.wait_for_url("**/slots/?booked=1")
        assert "Reservado" in page.inner_text(f'[data-booked-slot="{slot.pk}"]')
    finally:
        context.close()
