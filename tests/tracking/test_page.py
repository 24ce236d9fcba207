"""The customer's tracking page, `/t/<token>/`, rendered on the server (issue 3, T1-T4)."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tracking.models import Delivery, DeliveryProof, Driver

pytestmark = pytest.mark.django_db

_numbers = itertools.count(1)
PII = ("Ana García", "+19565550123", "ana@example.com", "1201 Matamoros St", "Apt 4B")


def make_driver(**overrides: Any) -> Driver:
    values: dict[str, Any] = {
        "external_id": f"drv_{next(_numbers)}", "name": "Sam Ortiz", "vehicle": "White van",
        "lat": 27.512345678, "lon": -99.487654321, "heading": 210.0, "position_recorded_at": timezone.now(),
    }  # fmt: skip
    values.update(overrides)
    return Driver.objects.create(**values)


def make_delivery(**overrides: Any) -> Delivery:
    now = timezone.now()
    values: dict[str, Any] = {
        "reference": f"ORD-{next(_numbers)}", "customer_name": "Ana García", "phone": "+19565550123",
        "email": "ana@example.com", "locale": "en", "address_line1": "1201 Matamoros St",
        "address_line2": "Apt 4B", "city": "Laredo", "postcode": "78040", "country": "US",
        "lat": 27.5036, "lon": -99.5075, "timezone": "America/Chicago", "details_at": now,
        "window_start": now + timedelta(hours=1), "window_end": now + timedelta(hours=3),
        "zone_code": "laredo-central", "status": "scheduled", "status_at": now,
    }  # fmt: skip
    values.update(overrides)
    return Delivery.objects.create(**values)


def on_the_way(
    *, stops_before: int | None = 1, status: str = "out_for_delivery", **overrides: Any
) -> Delivery:
    overrides.setdefault("eta", timezone.now() + timedelta(minutes=25))
    return make_delivery(status=status, driver=make_driver(), stops_before=stops_before, **overrides)


def page_url(delivery: Delivery, suffix: str = "") -> str:
    return f"/t/{delivery.tracking_token}/{suffix}"


def live_state(html: str) -> dict[str, str]:
    """The attributes of the page's `data-live-state` element."""
    match = re.search(r"<[a-z0-9]+ data-live-state([^>]*)>([^<]*)<", html)
    assert match, "no data-live-state element"
    attributes = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', match.group(1)))
    attributes["text"] = match.group(2).strip()
    return attributes


def upsert_event(reference: str, **data: Any) -> dict[str, Any]:
    """A signed-intake `delivery.upserted` event (contract section 1) with valid defaults."""
    body: dict[str, Any] = {
        "reference": reference,
        "customer": {
            "name": "Ana García", "phone": "+19565550123", "email": "ana@example.com", "locale": "en",
        },
        "address": {
            "line1": "1201 Matamoros St", "line2": "Apt 4B", "city": "Laredo", "postcode": "78040",
            "country": "US", "lat": 27.5036, "lon": -99.5075,
        },
        "timezone": "America/Chicago",
        "zone": "laredo-central",
        **data,
    }  # fmt: skip
    return {
        "id": f"up_{reference}_{next(_numbers)}",
        "type": "delivery.upserted",
        "occurred_at": _at(0),
        "data": body,
    }


def status_events(reference: str, count: int) -> list[dict[str, Any]]:
    cycle = ["scheduled", "out_for_delivery", "arriving", "attempt_failed"]
    return [
        {
            "id": f"st_{reference}_{next(_numbers)}",
            "type": "delivery.status",
            "occurred_at": _at(n + 1),
            "data": {"reference": reference, "status": cycle[n % len(cycle)]},
        }
        for n in range(count)
    ]


def _at(minutes: float) -> str:
    return (
        timezone.now().replace(microsecond=0) - timedelta(hours=2) + timedelta(minutes=minutes)
    ).isoformat()


@pytest.fixture(autouse=True)
def _fresh_throttle() -> None:
    cache.clear()


def test_the_page_answers_when_will_it_arrive_without_javascript(client: Client) -> None:
    delivery = on_the_way(stops_before=3, eta_window_start=None)
    response = client.get(page_url(delivery))
    html = response.content.decode()
    assert response.status_code == 200
    state = live_state(html)
    assert state["data-status"] == "out_for_delivery"
    assert state["text"] == "Out for delivery"
    assert state["data-eta"].startswith(delivery.eta.isoformat()[:16])
    assert 'role="status"' in html and 'aria-live="polite"' in html
    assert "3 stops before yours" in html
    assert "Sam is bringing it in a White van" in html
    assert "Ortiz" not in html  # first name only
    assert "Your delivery window" in html
    assert "<main" in html and "<footer" in html and "<header" in html
    assert '/notifications/?lang=en">Message settings' in html


def test_times_are_shown_in_the_deliverys_timezone(client: Client) -> None:
    eta = datetime(2030, 1, 15, 16, 40, tzinfo=UTC)  # 10:40 in Chicago (CST)
    delivery = on_the_way(eta=eta)
    html = client.get(page_url(delivery)).content.decode()
    assert "10:40 a.m." in html
    assert "4:40 p.m." not in html


def test_unknown_malformed_revoked_and_expired_tokens_get_the_same_404(client: Client) -> None:
    revoked = make_delivery(token_revoked_at=timezone.now())
    expired = make_delivery(status="delivered", status_at=timezone.now() - timedelta(days=8))
    fresh = make_delivery(status="delivered", status_at=timezone.now() - timedelta(days=6))
    responses = [
        client.get(path)
        for path in (
            "/t/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/",  # well-formed, unknown
            "/t/short/",
            "/t/%3Cscript%3Ealert(1)xxxxxxxxxxxxxxxxxxxxx/",
            "/t/" + "a" * 500 + "/",
            page_url(revoked),
            page_url(expired),
        )
    ]
    assert {r.status_code for r in responses} == {404}
    assert len({r.content for r in responses}) == 1
    assert client.get(page_url(fresh)).status_code == 200


def test_revoking_a_token_makes_it_404_on_the_next_request(client: Client) -> None:
    delivery = make_delivery()
    assert client.get(page_url(delivery)).status_code == 200
    Delivery.objects.filter(pk=delivery.pk).update(token_revoked_at=timezone.now())
    assert client.get(page_url(delivery)).status_code == 404


def test_a_client_that_keeps_missing_is_throttled_even_with_a_spoofed_forwarded_for(client: Client) -> None:
    delivery = make_delivery()
    for n in range(30):
        assert client.get(f"/t/{'x' * 22}{n:010d}/").status_code == 404
    throttled = client.get(f"/t/{'y' * 32}/", HTTP_X_FORWARDED_FOR=f"10.0.0.{n}")
    assert throttled.status_code == 429
    assert client.get(f"/t/{'w' * 32}/", HTTP_X_FORWARDED_FOR="10.9.9.9").status_code == 429
    other = Client(REMOTE_ADDR="192.0.2.7")
    assert other.get(f"/t/{'v' * 32}/").status_code == 404
    # A real link still opens (a shared NAT must not lock a customer out of their own page).
    assert client.get(page_url(delivery)).status_code == 200


def test_no_personal_data_reaches_the_page(client: Client) -> None:
    delivery = on_the_way(status="arriving")
    DeliveryProof.objects.create(delivery=delivery, recipient_name="", note="", occurred_at=timezone.now())
    for status in ("scheduled", "out_for_delivery", "arriving", "attempt_failed", "delivered"):
        Delivery.objects.filter(pk=delivery.pk).update(status=status)
        html = client.get(page_url(delivery)).content.decode()
        found = [value for value in PII if value in html]
        assert found == [], status
        assert "Matamoros St, Laredo" in html  # enough to recognise the address


def test_instructions_with_codes_are_never_echoed_back_in_full(client: Client) -> None:
    delivery = make_delivery(instructions="Gate code 48213, then door 7731", safe_place="Box 99123")
    html = client.get(page_url(delivery)).content.decode()
    assert "48213" not in html and "7731" not in html and "99123" not in html
    assert "•••13" in html and "••31" in html


def test_the_driver_position_shows_only_when_close_to_this_stop(client: Client) -> None:
    far = on_the_way(stops_before=6)
    close = on_the_way(stops_before=3)
    arriving = on_the_way(stops_before=None, status="arriving")
    unknown = on_the_way(stops_before=None)
    for delivery, shown in ((far, False), (close, True), (arriving, True), (unknown, False)):
        state = live_state(client.get(page_url(delivery)).content.decode())
        assert bool(state["data-driver-lat"]) is shown, delivery.stops_before
    state = live_state(client.get(page_url(close)).content.decode())
    assert state["data-driver-lat"] == "27.5123" and state["data-driver-lon"] == "-99.4877"


def test_after_delivery_the_map_and_position_are_gone_and_the_proof_is_shown(client: Client) -> None:
    delivery = on_the_way(status="delivered", stops_before=0)
    DeliveryProof.objects.create(
        delivery=delivery, recipient_name="Neighbour", note="Left with neighbour", photo=b"\x89PNG fake",
        photo_content_type="image/png", occurred_at=timezone.now(),
    )  # fmt: skip
    html = client.get(page_url(delivery)).content.decode()
    assert 'id="map"' not in html and "leaflet" not in html
    assert live_state(html)["data-driver-lat"] == ""
    assert "Received by Neighbour" in html and "Left with neighbour" in html
    photo = client.get(page_url(delivery, "proof/photo/"))
    assert (
        photo.status_code == 200 and photo["Content-Type"] == "image/png" and photo.content == b"\x89PNG fake"
    )
    assert client.get(f"/t/{'z' * 32}/proof/photo/").status_code == 404


def test_the_proof_photo_is_not_served_before_delivery(client: Client) -> None:
    delivery = make_delivery(status="out_for_delivery")
    DeliveryProof.objects.create(
        delivery=delivery, photo=b"x", photo_content_type="image/png", occurred_at=timezone.now()
    )
    assert client.get(page_url(delivery, "proof/photo/")).status_code == 404


def test_customer_and_sender_text_is_escaped_everywhere(client: Client) -> None:
    script = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    delivery = make_delivery(
        status="attempt_failed", status_reason=script, instructions=script, safe_place=script[:150],
        address_line1=script, city=script,
    )  # fmt: skip
    delivery.driver = make_driver(name=script, vehicle=script)
    delivery.save()
    html = client.get(page_url(delivery)).content.decode()
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html
    delivered = make_delivery(status="delivered")
    DeliveryProof.objects.create(
        delivery=delivered, recipient_name=script, note=script, occurred_at=timezone.now()
    )
    html = client.get(page_url(delivered)).content.decode()
    assert "<script>alert" not in html and "<img src=x" not in html


def test_the_timeline_costs_the_same_queries_whatever_its_length(client: Client, post_events: Any) -> None:
    counts = []
    for reference, changes in (("ORD-SHORT", 2), ("ORD-LONG", 40)):
        assert (
            post_events({"events": [upsert_event(reference), *status_events(reference, changes)]}).status_code
            == 200
        )
        delivery = Delivery.objects.get(reference=reference)
        cache.clear()
        with CaptureQueriesContext(connection) as queries:
            html = client.get(page_url(delivery)).content.decode()
        counts.append(len(queries))
        assert html.count("<li") >= min(changes, 30)
    assert counts[0] == counts[1]
    assert counts[0] <= 4


def test_the_page_is_never_stored_so_a_revisit_gets_the_current_state(client: Client) -> None:
    delivery = on_the_way()
    first = client.get(page_url(delivery))
    assert first["Cache-Control"] == "private, no-store"
    Delivery.objects.filter(pk=delivery.pk).update(stops_before=0, updated_at=timezone.now())
    assert "You are the next stop" in client.get(page_url(delivery)).content.decode()


def test_a_client_that_asks_with_the_etag_gets_304_until_the_delivery_changes(
    client: Client, django_assert_max_num_queries: Any
) -> None:
    delivery = on_the_way()
    client.get(page_url(delivery))  # the first visit sets the CSRF cookie, which the forms use
    etag = client.get(page_url(delivery))["ETag"]
    with django_assert_max_num_queries(2):
        revisit = client.get(page_url(delivery), headers={"If-None-Match": etag})
    assert revisit.status_code == 304 and revisit.content == b""
    assert revisit["Cache-Control"] == "private, no-store" and revisit["Referrer-Policy"] == "no-referrer"
    Delivery.objects.filter(pk=delivery.pk).update(stops_before=0, updated_at=timezone.now())
    changed = client.get(page_url(delivery), headers={"If-None-Match": etag})
    assert changed.status_code == 200 and "You are the next stop" in changed.content.decode()


def test_reading_the_page_changes_nothing(client: Client) -> None:
    delivery = on_the_way()
    before = Delivery.objects.values().get(pk=delivery.pk)
    for suffix in ("", "state/", "?lang=es", "proof/photo/"):
        client.get(page_url(delivery, suffix))
        client.head(page_url(delivery, suffix))
    assert Delivery.objects.values().get(pk=delivery.pk) == before


def test_every_tracking_response_carries_the_security_headers(client: Client) -> None:
    delivery = on_the_way()
    for response in (
        client.get(page_url(delivery)),
        client.get(page_url(delivery, "state/")),
        client.get("/t/nope/"),
    ):
        csp = response["Content-Security-Policy"]
        assert "script-src 'self' 'nonce-" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response["Referrer-Policy"] == "no-referrer"  # the token never leaves in a Referer
        assert response["X-Content-Type-Options"] == "nosniff"
        assert "noindex" in response["X-Robots-Tag"]
        assert response["Cache-Control"] == "private, no-store"


def test_the_page_has_no_inline_script_and_no_external_resource(client: Client) -> None:
    html = client.get(page_url(on_the_way())).content.decode()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert " on" not in re.sub(r"\s+", " ", " ".join(re.findall(r"<[^>]+>", html))).replace(" one", "")
    assert re.findall(r'(?:src|href)="(https?:)?//', html) == []


def test_the_snapshot_is_the_live_state_region_alone(client: Client) -> None:
    delivery = on_the_way(stops_before=2)
    response = client.get(page_url(delivery, "state/"))
    html = response.content.decode()
    assert response.status_code == 200
    assert html.strip().startswith('<section id="live"') and "<html" not in html
    assert live_state(html)["data-driver-lat"] == "27.5123"


def test_unsupported_methods_are_refused_cleanly(client: Client) -> None:
    delivery = make_delivery()
    assert client.post(page_url(delivery)).status_code == 405
    assert client.put(page_url(delivery, "state/")).status_code == 405
    assert client.get(page_url(delivery, "instructions/")).status_code == 405


def test_the_spanish_page_follows_the_deliverys_locale_and_the_switch(client: Client) -> None:
    delivery = on_the_way(locale="es-MX", stops_before=2, eta=datetime(2030, 1, 15, 16, 40, tzinfo=UTC))
    html = client.get(page_url(delivery)).content.decode()
    assert '<html lang="es">' in html
    assert live_state(html)["text"] == "En camino"
    assert "2 paradas antes de la suya" in html
    assert "10:40" in html and "a.m." not in html
    assert f'href="/t/{delivery.tracking_token}/?lang=en"' in html
    english = client.get(page_url(delivery, "?lang=en")).content.decode()
    assert live_state(english)["text"] == "Out for delivery"
    assert client.get(page_url(delivery, "?lang=xx")).status_code == 200


def test_reschedule_is_the_main_action_after_a_failed_attempt(client: Client) -> None:
    failed = make_delivery(status="attempt_failed", status_reason="No one home")
    html = client.get(page_url(failed)).content.decode()
    assert f'class="button primary" href="/t/{failed.tracking_token}/slots/?lang=en">Reschedule' in html
    assert "No one home" in html
    unbooked = make_delivery(window_start=None, window_end=None)
    assert "Choose a delivery time" in client.get(page_url(unbooked)).content.decode()
    moving = on_the_way()
    assert "/slots/" not in client.get(page_url(moving)).content.decode()
    no_zone = make_delivery(zone_code="")
    assert "/slots/" not in client.get(page_url(no_zone)).content.decode()


def test_a_page_kept_rendered_still_shows_every_change(client: Client, post_events: Any) -> None:
    post_events({"events": [upsert_event("ORD-KEPT"), *status_events("ORD-KEPT", 1)]})
    delivery = Delivery.objects.get(reference="ORD-KEPT")
    assert live_state(client.get(page_url(delivery)).content.decode())["data-status"] == "scheduled"
    assert live_state(client.get(page_url(delivery)).content.decode())["data-status"] == "scheduled"
    post_events({"events": status_events("ORD-KEPT", 2)[1:]})  # out_for_delivery, newer
    assert live_state(client.get(page_url(delivery)).content.decode())["data-status"] == "out_for_delivery"
    Delivery.objects.filter(pk=delivery.pk).update(token_revoked_at=timezone.now())
    assert client.get(page_url(delivery)).status_code == 404


def test_a_page_kept_rendered_carries_each_visitors_own_csrf_token() -> None:
    delivery = make_delivery(status="delivered")
    first, second = Client(enforce_csrf_checks=True), Client(enforce_csrf_checks=True)
    tokens = []
    for visitor in (first, second):
        html = visitor.get(page_url(delivery)).content.decode()
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
        assert match and "placeholder" not in match.group(1)
        tokens.append(match.group(1))
    assert tokens[0] != tokens[1]
    response = second.post(page_url(delivery, "feedback/"), {"rating": "5", "csrfmiddlewaretoken": tokens[1]})
    assert response.status_code == 302


def test_tokens_are_long_random_url_safe_and_unrelated_to_anything() -> None:
    from tracking.models import new_tracking_token

    tokens = [new_tracking_token() for _ in range(100_000)]
    assert len(set(tokens)) == len(tokens)
    assert all(len(t) >= 22 and re.fullmatch(r"[A-Za-z0-9_-]+", t) for t in tokens)
    # No order: consecutive tokens are as often greater as smaller than the one before.
    rising = sum(a < b for a, b in itertools.pairwise(tokens))
    assert 0.49 < rising / len(tokens) < 0.51
    made = [make_delivery(reference=f"ORD-T1-{n}") for n in range(3)]
    assert all(d.reference not in d.tracking_token for d in made)
