"""What the customer decides on the tracking page: instructions, safe place, feedback (issue 3, 4)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client

from tests.tracking.test_page import make_delivery, on_the_way, page_url
from tracking.models import Delivery, OutboundEvent

pytestmark = pytest.mark.django_db

HOSTILE = '<script>alert("x")</script>"><img src=x onerror=alert(1)>'


@pytest.fixture(autouse=True)
def _fresh_throttle() -> None:
    cache.clear()


def htmx(client: Client, url: str, data: dict[str, Any]) -> Any:
    return client.post(url, data, HTTP_HX_REQUEST="true")


def test_instructions_are_kept_and_sent_to_the_routing_backend_through_the_outbox(client: Client) -> None:
    delivery = on_the_way()
    response = client.post(
        page_url(delivery, "instructions/"),
        {"instructions": "Ring twice", "safe_place": "Porch", "lang": "es"},
    )
    assert response.status_code == 302
    assert response["Location"] == f"/t/{delivery.tracking_token}/?lang=es#instructions"
    delivery.refresh_from_db()
    assert (delivery.instructions, delivery.safe_place) == ("Ring twice", "Porch")
    row = OutboundEvent.objects.get()
    assert row.type == "delivery.instructions_updated"
    assert row.data == {"reference": delivery.reference, "instructions": "Ring twice", "safe_place": "Porch"}


def test_an_empty_safe_place_is_sent_as_null(client: Client) -> None:
    delivery = make_delivery()
    client.post(
        page_url(delivery, "instructions/"), {"instructions": "Leave at reception", "safe_place": "  "}
    )
    assert OutboundEvent.objects.get().data["safe_place"] is None


def test_with_htmx_the_instructions_region_alone_comes_back(client: Client) -> None:
    delivery = make_delivery(locale="es")
    response = htmx(
        client, page_url(delivery, "instructions/"), {"instructions": "Code 123456", "safe_place": ""}
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert html.strip().startswith('<section id="instructions"') and "<html" not in html
    assert "Gracias, su repartidor verá estas instrucciones." in html
    assert "123456" not in html and "••••56" in html


def test_oversized_or_hostile_instructions_are_refused_or_escaped(client: Client) -> None:
    delivery = make_delivery()
    too_long = client.post(
        page_url(delivery, "instructions/"), {"instructions": "x" * 1001, "safe_place": ""}
    )
    assert too_long.status_code == 400
    too_long_place = htmx(
        client, page_url(delivery, "instructions/"), {"instructions": "", "safe_place": "y" * 201}
    )
    assert too_long_place.status_code == 200  # htmx swaps only 2xx: the region shows the error
    assert 'role="alert"' in too_long_place.content.decode()
    assert OutboundEvent.objects.count() == 0
    nul = client.post(page_url(delivery, "instructions/"), {"instructions": "a\x00b", "safe_place": ""})
    assert nul.status_code == 400
    hostile = client.post(
        page_url(delivery, "instructions/"), {"instructions": HOSTILE, "safe_place": HOSTILE[:150]}
    )
    assert hostile.status_code == 302
    html = client.get(page_url(delivery)).content.decode()
    assert "<script>alert" not in html and "<img src=x" not in html


def test_instructions_cannot_change_after_the_delivery_is_finished(client: Client) -> None:
    delivery = make_delivery(status="delivered")
    response = client.post(page_url(delivery, "instructions/"), {"instructions": "late", "safe_place": ""})
    assert response.status_code == 400
    assert OutboundEvent.objects.count() == 0
    assert Delivery.objects.get(pk=delivery.pk).instructions == ""


def test_feedback_after_delivery_is_sent_once(client: Client) -> None:
    delivery = make_delivery(status="delivered")
    first = client.post(page_url(delivery, "feedback/"), {"rating": "4", "comment": "Quick, thanks"})
    assert first.status_code == 302
    again = client.post(page_url(delivery, "feedback/"), {"rating": "1", "comment": "changed my mind"})
    assert again.status_code == 409
    row = OutboundEvent.objects.get()
    assert row.type == "delivery.feedback"
    assert row.data == {"reference": delivery.reference, "rating": 4, "comment": "Quick, thanks"}
    html = client.get(page_url(delivery)).content.decode()
    assert "Thank you for your feedback (4 of 5)." in html


def test_feedback_with_htmx_returns_the_feedback_region(client: Client) -> None:
    delivery = make_delivery(status="delivered")
    response = htmx(client, page_url(delivery, "feedback/"), {"rating": "5", "comment": ""})
    assert response.status_code == 200
    assert response.content.decode().strip().startswith('<section id="feedback"')
    assert OutboundEvent.objects.get().data["comment"] is None


@pytest.mark.parametrize("rating", ["0", "6", "-1", "x", "", "4.5", "9" * 50])
def test_a_rating_outside_1_to_5_is_refused(client: Client, rating: str) -> None:
    delivery = make_delivery(status="delivered")
    assert client.post(page_url(delivery, "feedback/"), {"rating": rating}).status_code == 400
    assert OutboundEvent.objects.count() == 0


def test_feedback_before_delivery_is_refused(client: Client) -> None:
    delivery = on_the_way()
    assert client.post(page_url(delivery, "feedback/"), {"rating": "5"}).status_code == 409
    assert OutboundEvent.objects.count() == 0


def test_a_post_without_a_csrf_token_is_forbidden() -> None:
    delivery = make_delivery(status="delivered")
    strict = Client(enforce_csrf_checks=True)
    assert strict.post(page_url(delivery, "feedback/"), {"rating": "5"}).status_code == 403
    assert strict.post(page_url(delivery, "instructions/"), {"instructions": "x"}).status_code == 403
    assert OutboundEvent.objects.count() == 0


def test_actions_on_an_unknown_token_get_the_404_page(client: Client) -> None:
    for suffix in ("instructions/", "feedback/"):
        response = client.post(f"/t/{'q' * 32}/{suffix}", {"instructions": "x", "rating": "5"})
        assert response.status_code == 404
    assert OutboundEvent.objects.count() == 0


def test_the_forms_work_without_javascript(client: Client) -> None:
    delivery = make_delivery(status="delivered")
    html = client.get(page_url(delivery)).content.decode()
    assert f'method="post" action="/t/{delivery.tracking_token}/feedback/"' in html
    assert 'name="csrfmiddlewaretoken"' in html
    other = make_delivery()
    assert f'action="/t/{other.tracking_token}/instructions/"' in client.get(page_url(other)).content.decode()
