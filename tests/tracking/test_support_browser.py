"""The support desk in a real Chromium: the list, the delivery page and the KPI page load under
the site's CSP with no violation, and an action is a plain form that works."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from tests.tracking.support_factories import make_delivery, make_driver, support_user
from tracking.models import SupportAction

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def logged_in_page(browser: Any, live_server: Any) -> tuple[Any, list[str]]:
    client = Client()
    client.force_login(support_user("browser-agent"))
    context = browser.new_context()
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}])
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    return page, console


def test_the_desk_pages_load_without_csp_violations_and_a_note_is_added(
    live_server: Any, browser: Any
) -> None:
    delivery = make_delivery(customer_name="María José Peña", driver=make_driver(lat=27.51, lon=-99.5))
    page, console = logged_in_page(browser, live_server)
    page.goto(f"{live_server.url}/admin/tracking/delivery/?q=maria+jose+pena")
    assert page.locator("#result_list").inner_text().count(delivery.reference) == 1
    page.click(f"text={delivery.reference}")
    page.wait_for_selector("#support-desk")
    assert page.locator('.support-map svg circle[fill="#0969da"]').count() == 1  # the driver
    page.fill('textarea[name="text"]', "Called about the gate code")
    page.click("text=Add note")
    page.wait_for_selector("text=Note added.")
    assert page.locator(".support-timeline").inner_text().count("Called about the gate code") == 1
    page.goto(f"{live_server.url}/admin/tracking/delivery/kpis/")
    assert page.locator('.support-kpis svg[role="img"]').count() == 5
    assert SupportAction.objects.get().username == "browser-agent"
    assert not [line for line in console if "Content Security Policy" in line], console
