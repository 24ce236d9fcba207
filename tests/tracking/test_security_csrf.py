"""Referrer-Policy: no-referrer on the customer's pages, and their forms still pass CSRF.

With no-referrer, browsers send `Origin: null` on a form POST, which Django's CSRF check
refuses; config.middleware.TokenUrlCsrfMiddleware accepts it on the token URLs alone, and only
with the CSRF cookie and the form's token (issue #7 point 2, T4).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from scheduling.models import Booking
from tests.scheduling.factories import make_delivery as make_scheduling_delivery
from tests.scheduling.factories import make_slot, make_zone
from tests.tracking.test_page import make_delivery, page_url
from tracking.models import Delivery

pytestmark = pytest.mark.django_db
TOKEN_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def browser_with_token(path: str) -> tuple[Client, str]:
    """A client holding the CSRF cookie and the form token of the page at `path`."""
    browser = Client(enforce_csrf_checks=True)
    response = browser.get(path)
    assert response.status_code == 200
    match = TOKEN_RE.search(response.content.decode())
    assert match, "no form on the page"
    return browser, match.group(1)


def test_a_form_post_with_origin_null_and_its_token_is_accepted_on_a_tracking_page() -> None:
    delivery = make_delivery()
    browser, token = browser_with_token(page_url(delivery))
    response = browser.post(
        page_url(delivery, "instructions/"),
        {"instructions": "Ring twice", "csrfmiddlewaretoken": token},
        headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"},
    )
    assert response.status_code == 302
    delivery.refresh_from_db()
    assert delivery.instructions == "Ring twice"


def test_a_post_with_neither_origin_nor_referer_over_https_still_needs_only_its_token() -> None:
    delivery = make_delivery()
    browser, token = browser_with_token(page_url(delivery))
    response = browser.post(
        page_url(delivery, "instructions/"),
        {"instructions": "Side door", "csrfmiddlewaretoken": token},
        secure=True,
    )
    assert response.status_code == 302


@pytest.mark.parametrize(
    ("headers", "with_token"),
    [
        ({"Origin": "null"}, False),  # the token is still required
        ({}, False),
        ({"Origin": "https://evil.example"}, True),  # a real foreign origin: Django's check
        ({"Origin": "null", "Sec-Fetch-Site": "cross-site"}, True),  # the browser says: not ours
        ({"Origin": "null", "Sec-Fetch-Site": "same-site"}, True),
    ],
)
def test_a_post_without_its_token_or_from_another_site_is_403(
    headers: dict[str, str], with_token: bool
) -> None:
    delivery = make_delivery()
    browser, token = browser_with_token(page_url(delivery))
    data = {"instructions": "Forged", **({"csrfmiddlewaretoken": token} if with_token else {})}
    response = browser.post(page_url(delivery, "instructions/"), data, headers=headers)
    assert response.status_code == 403
    assert Delivery.objects.get(pk=delivery.pk).instructions == ""


def test_a_wrong_token_with_origin_null_is_403() -> None:
    delivery = make_delivery()
    browser, token = browser_with_token(page_url(delivery))
    response = browser.post(
        page_url(delivery, "instructions/"),
        {"instructions": "Forged", "csrfmiddlewaretoken": token[::-1]},
        headers={"Origin": "null"},
    )
    assert response.status_code == 403


def test_the_exception_is_for_token_urls_only_the_admin_login_keeps_djangos_check() -> None:
    User.objects.create_superuser("staff", "staff@example.com", "a-long-password-1")
    browser, token = browser_with_token("/admin/login/")
    data = {"username": "staff", "password": "a-long-password-1", "csrfmiddlewaretoken": token}
    assert browser.post("/admin/login/", data, headers={"Origin": "null"}).status_code == 403
    assert browser.post("/admin/login/", data, headers={"Origin": "http://testserver"}).status_code == 302


def test_the_slot_page_and_the_message_settings_accept_origin_null_with_their_token() -> None:
    zone = make_zone()
    slot = make_slot(zone=zone)
    delivery = make_scheduling_delivery(zone=zone)
    path = f"/t/{delivery.tracking_token}/slots/"
    browser, token = browser_with_token(path)
    response = browser.post(path, {"slot": slot.pk, "csrfmiddlewaretoken": token}, headers={"Origin": "null"})
    assert response.status_code == 303
    assert Booking.objects.get(delivery=delivery).slot == slot

    path = f"/t/{delivery.tracking_token}/notifications/"
    browser, token = browser_with_token(path)
    data = {"sms": "on", "language": "en", "csrfmiddlewaretoken": token}
    assert browser.post(path, data, headers={"Origin": "null"}).status_code == 302
    assert browser.post(path, {"sms": "on", "language": "en"}, headers={"Origin": "null"}).status_code == 403


# --- in a real Chromium, over plain http, under no-referrer ------------------------------------


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_chromium_posts_the_form_without_javascript_under_no_referrer(live_server: Any, browser: Any) -> None:
    delivery = make_delivery()
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    sent: list[dict[str, str]] = []
    page.on("request", lambda request: sent.append(request.headers) if request.method == "POST" else None)
    try:
        response = page.goto(f"{live_server.url}{page_url(delivery)}")
        assert response is not None and response.headers["referrer-policy"] == "no-referrer"
        page.fill("textarea[name=instructions]", "Behind the blue gate")
        with page.expect_navigation():
            page.click("form[action$='instructions/'] [type=submit]")
        assert "CSRF" not in page.content()
        assert "Thank you" in page.content() or "Behind the" in page.content()
        # The case this is about: Chromium did hide where the POST came from.
        assert sent and sent[0].get("origin") == "null" and "referer" not in sent[0]
    finally:
        context.close()
    delivery.refresh_from_db()
    assert delivery.instructions == "Behind the blue gate"


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_chromium_posts_the_form_with_htmx_under_no_referrer(live_server: Any, page: Any) -> None:
    delivery = make_delivery()
    violations: list[str] = []
    page.on(
        "console",
        lambda message: violations.append(message.text) if "Content Security" in message.text else None,
    )
    page.goto(f"{live_server.url}{page_url(delivery)}")
    page.wait_for_function("window.htmx !== undefined")
    page.evaluate("window.__sameDocument = true")
    page.fill("textarea[name=instructions]", "Leave it with the neighbour")
    page.click("form[action$='instructions/'] [type=submit]")
    page.wait_for_selector("#instructions .notice")
    assert page.evaluate("window.__sameDocument") is True  # swapped by htmx, not a reload
    assert violations == []
    delivery.refresh_from_db()
    assert delivery.instructions == "Leave it with the neighbour"


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_chromium_books_a_slot_without_javascript_under_no_referrer(live_server: Any, browser: Any) -> None:
    zone = make_zone()
    slot = make_slot(zone=zone)
    delivery = make_scheduling_delivery(zone=zone)
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(f"{live_server.url}/t/{delivery.tracking_token}/slots/")
        page.check(f'input[name="slot"][value="{slot.pk}"]')
        page.click("button[type=submit]")
        page.wait_for_url("**/slots/?booked=1")
    finally:
        context.close()
    assert Booking.objects.get(delivery=delivery).slot == slot
