"""Security headers (issue #7 point 2, RELIABILITY T4): every response under a customer's link
carries the same privacy headers and a strict Content-Security-Policy from django-csp; the
admin is covered by the same policy and loads in Chromium with no violation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from tests.scheduling.factories import make_zone
from tests.tracking.test_page import make_delivery, on_the_way, page_url
from tracking.models import DeliveryProof

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_throttle() -> None:
    cache.clear()


def directives(response: Any) -> dict[str, list[str]]:
    policy = response["Content-Security-Policy"]
    return {part.split()[0]: part.split()[1:] for part in (p.strip() for p in policy.split(";")) if part}


def assert_customer_headers(response: Any) -> None:
    csp = directives(response)
    assert "'self'" in csp["script-src"] and any(s.startswith("'nonce-") for s in csp["script-src"])
    assert "'unsafe-inline'" not in response["Content-Security-Policy"]
    assert "'unsafe-eval'" not in response["Content-Security-Policy"]
    assert csp["style-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"] and csp["object-src"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"] and csp["form-action"] == ["'self'"]
    assert response["Referrer-Policy"] == "no-referrer"
    assert response["Cache-Control"] == "private, no-store" or "no-store" in response["Cache-Control"]
    assert "private" in response["Cache-Control"]
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert "noindex" in response["X-Robots-Tag"]


def test_every_response_under_a_customers_link_carries_the_headers(client: Client) -> None:
    make_zone(code="laredo-central")
    delivery = on_the_way()
    delivered = make_delivery(status="delivered")
    DeliveryProof.objects.create(
        delivery=delivered, photo=b"\x89PNG fake", photo_content_type="image/png", occurred_at=timezone.now()
    )
    unknown = "/t/" + "Q" * 32 + "/"
    responses = {
        "page": client.get(page_url(delivery)),
        "snapshot": client.get(page_url(delivery, "state/")),
        "head": client.head(page_url(delivery)),
        "instructions": client.post(page_url(delivery, "instructions/"), {"instructions": "Ring"}),
        "instructions (htmx)": client.post(
            page_url(delivery, "instructions/"), {"instructions": "Ring"}, headers={"HX-Request": "true"}
        ),
        "bad feedback": client.post(page_url(delivered, "feedback/"), {"rating": "9"}),
        "photo": client.get(page_url(delivered, "proof/photo/")),
        "slots": client.get(page_url(delivery, "slots/")),
        "message settings": client.get(page_url(delivery, "notifications/")),
        "unknown": client.get(unknown),
        "unknown settings": client.get(unknown + "notifications/"),
        "wrong method": client.delete(page_url(delivery)),
        "no such page": client.get(page_url(delivery, "nothing-here/")),
    }
    for name, response in responses.items():
        assert response.status_code < 500, name
        assert_customer_headers(response)


def test_the_map_tiles_origin_is_the_one_image_source_beyond_our_own(client: Client) -> None:
    csp = directives(client.get(page_url(on_the_way())))
    tiles = urlsplit(settings.MAP_TILE_URL)
    assert csp["img-src"] == ["'self'", "data:", f"{tiles.scheme}://{tiles.netloc.replace('{s}', '*')}"]
    assert csp["connect-src"] == ["'self'"] and csp["default-src"] == ["'self'"]


def test_each_response_has_its_own_nonce(client: Client) -> None:
    delivery = on_the_way()
    nonces = {
        re.search(r"'nonce-([^']+)'", client.get(page_url(delivery))["Content-Security-Policy"]).group(1)  # type: ignore[union-attr]
        for _ in range(3)
    }
    assert len(nonces) == 3 and all(len(n) >= 22 for n in nonces)


def test_a_throttled_client_gets_the_headers_too(client: Client) -> None:
    for n in range(settings.PORCHLIGHT_TOKEN_MISS_LIMIT + 1):
        response = client.get(f"/t/{'m' * 22}{n:010d}/")
    assert response.status_code == 429
    assert_customer_headers(response)


def test_no_template_holds_an_inline_script_style_or_event_handler() -> None:
    for path in (Path(settings.BASE_DIR) / "templates").rglob("*.html"):
        if "notifications/email" in str(path):  # emails are not served under our CSP
            continue
        html = re.sub(r"{% comment %}.*?{% endcomment %}|{#.*?#}", "", path.read_text(), flags=re.S)
        assert not re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html), path
        assert not re.search(r"<style[\s>]", html), path
        assert not re.search(r"\son[a-z]+\s*=", html), path
        assert not re.search(r'\sstyle\s*=\s*"', html), path
        assert "javascript:" not in html, path


def test_the_admin_has_the_policy_and_keeps_same_origin_referrers() -> None:
    User.objects.create_superuser("staff", "staff@example.com", "a-long-password-1")
    staff = Client()
    staff.force_login(User.objects.get())
    response = staff.get("/admin/")
    assert response.status_code == 200
    assert directives(response)["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in response["Content-Security-Policy"]
    assert response["Referrer-Policy"] == "same-origin"  # the admin's own forms keep Django's CSRF check
    assert response["X-Frame-Options"] == "DENY"


# --- in Chromium: pages load with no CSP violation -------------------------------------------


def violations_on(page: Any, url: str) -> list[str]:
    found: list[str] = []
    page.on("console", lambda m: found.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(url)
    page.wait_for_load_state("load")
    return found


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_tracking_page_loads_in_chromium_with_no_csp_violation(live_server: Any, page: Any) -> None:
    tiles = urlsplit(settings.MAP_TILE_URL).hostname or "tile.openstreetmap.org"
    page.route(f"https://{tiles}/**", lambda route: route.fulfill(status=204))
    assert violations_on(page, f"{live_server.url}{page_url(on_the_way(stops_before=0))}") == []
    page.wait_for_function("window.htmx !== undefined && window.L !== undefined")
    assert page.evaluate("document.querySelectorAll('style').length") == 0  # htmx injects no indicator style


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_admin_pages_load_in_chromium_with_no_csp_violation(live_server: Any, page: Any) -> None:
    User.objects.create_superuser("staff", "staff@example.com", "a-long-password-1")
    make_delivery()
    found: list[str] = []
    page.on("console", lambda m: found.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "staff")
    page.fill("#id_password", "a-long-password-1")
    with page.expect_navigation():
        page.click("input[type=submit]")
    changelists = sorted(
        {
            href
            for href in page.eval_on_selector_all("#content-main a", "links => links.map(a => a.pathname)")
            if re.fullmatch(r"/admin/\w+/\w+/", href)
        }
    )
    assert "/admin/tracking/delivery/" in changelists
    visited = []
    for changelist in changelists:
        page.goto(f"{live_server.url}{changelist}")
        visited.append(changelist)
        first = page.query_selector("#result_list tbody a")
        if first is not None:
            page.goto(f"{live_server.url}{first.get_attribute('href')}")
            page.wait_for_load_state("load")
            visited.append("(change form)")
    # A form with the admin's widgets' JS, and the support desk's KPI page (server-side charts).
    for extra in ("/admin/auth/user/add/", "/admin/tracking/delivery/kpis/"):
        page.goto(f"{live_server.url}{extra}")
        page.wait_for_load_state("load")
        visited.append(extra)
    assert found == [], f"{found[:3]} after {visited}"
