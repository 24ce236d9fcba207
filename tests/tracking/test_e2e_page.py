"""End to end: Debian's Chromium (Playwright) on the tracking page served by a real daphne,
while signed events go into the intake. Status, ETA and marker must follow without reload."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from django.conf import settings

from tests.services import ROOT, daphne
from tests.tracking.test_consumer import SESSION_PREFIX, eta, layer, ping, status  # noqa: F401 (layer: autouse)
from tests.tracking.test_page import upsert_event
from tracking import signing
from tracking.models import Delivery

pytestmark = [
    pytest.mark.browser,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.django_db(transaction=True),
]
SCREENSHOTS = ROOT / "var" / "screenshots"
TILE_HOST = urlsplit(settings.MAP_TILE_URL).hostname or "tile.openstreetmap.org"


def post(base: str, *events: dict[str, Any]) -> None:
    body = json.dumps({"events": list(events)}).encode()
    headers = {
        "Content-Type": "application/json",
        signing.HEADER: signing.sign(secret=settings.PORCHLIGHT_ROUTING_SECRETS[0], body=body),
    }
    response = httpx.post(f"{base}/api/v1/events", content=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert {r["result"] for r in response.json()["results"]} == {"accepted"}, response.text


def attribute(page: Any, name: str) -> str:
    return page.get_attribute("[data-live-state]", name) or ""


def wait_attribute(page: Any, name: str, expected: str) -> None:
    page.wait_for_function(
        "([name, value]) => document.querySelector('[data-live-state]').getAttribute(name) === value",
        arg=[name, expected],
        timeout=10_000,
    )


def block_tiles(page: Any) -> list[str]:
    """Tiles are the one external request allowed; offline here, so they are answered empty."""
    requested: list[str] = []
    page.route(f"https://{TILE_HOST}/**", lambda route: route.fulfill(status=204))
    page.on("request", lambda request: requested.append(request.url))
    return requested


def test_status_eta_and_marker_follow_the_intake_without_reload(page: Any) -> None:
    with daphne(CHANNEL_LAYER_PREFIX=SESSION_PREFIX) as base:
        post(
            base,
            upsert_event("ORD-E2E-1"),
            status("ORD-E2E-1", "out_for_delivery", -20, "drv_e2e"),
            eta("ORD-E2E-1", -19, 6),
        )
        post(base, ping("drv_e2e", -18, lat=27.45))
        token = Delivery.objects.get(reference="ORD-E2E-1").tracking_token
        requested = block_tiles(page)
        page.goto(f"{base}/t/{token}/")
        page.evaluate("window.__sameDocument = true")
        page.wait_for_selector("#tracking[data-socket=open]", timeout=10_000)
        assert attribute(page, "data-status") == "out_for_delivery"
        assert attribute(page, "data-driver-lat") == ""  # six stops away: no position at all
        assert page.locator(".driver-icon").count() == 0
        eta_before = page.inner_text("[data-eta-text]")

        post(base, eta("ORD-E2E-1", -10, 2))  # now close: the newest position appears
        wait_attribute(page, "data-driver-lat", "27.4500")
        page.wait_for_selector(".driver-icon", timeout=5_000)
        page.wait_for_function(
            "(before) => document.querySelector('[data-eta-text]').innerText !== before",
            arg=eta_before,
            timeout=10_000,
        )
        marker_before = page.get_attribute(".driver-icon", "style")

        post(base, ping("drv_e2e", -5, lat=27.48, lon=-99.49))
        wait_attribute(page, "data-driver-lat", "27.4800")
        page.wait_for_function(
            "(before) => document.querySelector('.driver-icon').getAttribute('style') !== before",
            arg=marker_before,
            timeout=5_000,
        )
        post(base, ping("drv_e2e", -7, lat=27.10))  # late: recorded before the one shown
        post(base, status("ORD-E2E-1", "arriving", -4, "drv_e2e"))
        page.wait_for_function(
            "() => document.querySelector('[data-live-state]').textContent.trim() === 'Arriving soon'",
            timeout=10_000,
        )
        assert attribute(page, "data-driver-lat") == "27.4800"

        post(base, status("ORD-E2E-1", "delivered", -1))
        wait_attribute(page, "data-status", "delivered")
        page.wait_for_function("() => document.querySelectorAll('.driver-icon').length === 0", timeout=5_000)
        assert page.locator(".map-card").is_hidden()
        assert page.inner_text("[data-live-state]").strip() == "Delivered"
        assert page.evaluate("window.__sameDocument") is True  # never reloaded
        assert page.locator("[data-live-state][role=status][aria-live=polite]").count() == 1

        foreign = [url for url in requested if urlsplit(url).netloc not in (urlsplit(base).netloc, TILE_HOST)]
        assert foreign == []


def test_the_page_reads_well_at_360_px_and_weighs_under_200_kb_compressed(browser: Any) -> None:
    with daphne(CHANNEL_LAYER_PREFIX=SESSION_PREFIX) as base:
        post(
            base,
            upsert_event(
                "ORD-E2E-2", window={"start": "2030-01-15T16:00:00Z", "end": "2030-01-15T18:00:00Z"}
            ),
            status("ORD-E2E-2", "out_for_delivery", -30, "drv_e2e_2"),
            eta("ORD-E2E-2", -29, 2),
            ping("drv_e2e_2", -2, lat=27.51, lon=-99.495),
        )
        token = Delivery.objects.get(reference="ORD-E2E-2").tracking_token
        context = browser.new_context(viewport={"width": 360, "height": 780}, device_scale_factor=1)
        page = context.new_page()
        sizes: dict[str, int] = {}

        def record(response: Any) -> None:
            if urlsplit(response.url).hostname != TILE_HOST and response.status == 200:
                sizes[response.url] = len(gzip.compress(response.body(), 6))

        block_tiles(page)
        page.on("response", record)
        page.goto(f"{base}/t/{token}/", wait_until="networkidle")
        page.wait_for_selector(".driver-icon", timeout=10_000)
        assert page.evaluate("document.documentElement.scrollWidth") <= 360  # no sideways scrolling
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "tracking-360.png"), full_page=True)
        page.goto(f"{base}/t/{token}/?lang=es", wait_until="networkidle")
        assert page.inner_text("[data-live-state]").strip() == "En camino"
        page.screenshot(path=str(SCREENSHOTS / "tracking-360-es.png"), full_page=True)
        context.close()
        # What WhiteNoise serves after collectstatic (gzip files), and the page itself.
        total = sum(sizes.values())
        Path(SCREENSHOTS / "tracking-weight.json").write_text(
            json.dumps({"total_gzip_bytes": total, **sizes}, indent=1)
        )
        assert total < 200 * 1024, sizes


def test_the_keyboard_reaches_every_control_in_order(page: Any) -> None:
    with daphne(CHANNEL_LAYER_PREFIX=SESSION_PREFIX) as base:
        post(base, upsert_event("ORD-E2E-3"), status("ORD-E2E-3", "attempt_failed", -3))
        token = Delivery.objects.get(reference="ORD-E2E-3").tracking_token
        block_tiles(page)
        page.goto(f"{base}/t/{token}/")
        focused = []
        for _ in range(12):
            page.keyboard.press("Tab")
            focused.append(
                page.evaluate("document.activeElement.textContent.trim() || document.activeElement.name")
            )
        assert focused[0] == "Skip to content"
        assert "Reschedule" in focused
        assert "instructions" in focused and "Save instructions" in focused


def test_the_instructions_form_works_as_a_plain_post_without_javascript(browser: Any) -> None:
    # A plain form POST must pass Django's CSRF origin check: with "no-referrer" Chromium
    # sends `Origin: null` and the customer gets a 403.
    context = browser.new_context(java_script_enabled=False, viewport={"width": 360, "height": 800})
    page = context.new_page()
    try:
        with daphne(CHANNEL_LAYER_PREFIX=SESSION_PREFIX) as base:
            post(base, upsert_event("ORD-E2E-NOJS"))
            delivery = Delivery.objects.get(reference="ORD-E2E-NOJS")
            block_tiles(page)
            page.goto(f"{base}/t/{delivery.tracking_token}/")
            page.fill("textarea[name=instructions]", "Leave it behind the blue gate")
            with page.expect_navigation():
                page.click("form[action$='instructions/'] [type=submit]")
            assert "CSRF" not in page.content()
            delivery.refresh_from_db()
            assert delivery.instructions == "Leave it behind the blue gate"
    finally:
        context.close()
