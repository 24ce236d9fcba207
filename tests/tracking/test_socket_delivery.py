"""socket_delivery: what a socket's handshake reads, in one query, the same as the page's lookup."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.tracking.support_factories import make_delivery, make_driver
from tracking import live
from tracking.customer import delivery_for_token, delivery_language, socket_delivery

pytestmark = pytest.mark.django_db


def both(token: str) -> tuple[object, object]:
    return delivery_for_token(token=token), socket_delivery(token=token)


def test_a_socket_reads_the_same_state_as_the_page_in_one_query() -> None:
    now = timezone.now()
    driver = make_driver(lat=27.51234, lon=-99.49876, heading=90.0, position_recorded_at=now)
    delivery = make_delivery(
        status="arriving", status_at=now, driver=driver, stops_before=0, locale="es-MX",
        eta=now + timedelta(minutes=7), eta_window_start=now, eta_window_end=now + timedelta(minutes=15),
    )  # fmt: skip

    with CaptureQueriesContext(connection) as queries:
        found = socket_delivery(token=delivery.tracking_token)
        state = live.delivery_state(found)  # type: ignore[arg-type]
        language = delivery_language(found)  # type: ignore[arg-type]
        shows = live.shows_position(found)  # type: ignore[arg-type]

    assert len(queries.captured_queries) == 1
    page = delivery_for_token(token=delivery.tracking_token)
    assert page is not None
    assert state == live.delivery_state(page)
    assert state["live"] is True and state["location"] is not None  # the driver came along
    assert (language, shows) == ("es", True)


def test_a_delivery_without_a_driver_has_none() -> None:
    delivery = make_delivery(status="scheduled")
    found = socket_delivery(token=delivery.tracking_token)
    assert found is not None and found.driver is None
    assert live.delivery_state(found) == live.delivery_state(
        delivery_for_token(token=delivery.tracking_token)
    )  # type: ignore[arg-type]


def test_unknown_malformed_revoked_and_expired_tokens_give_none_as_for_the_page() -> None:
    revoked = make_delivery(token_revoked_at=timezone.now())
    expired = make_delivery(status="delivered", status_at=timezone.now() - timedelta(days=8))
    recent = make_delivery(status="delivered", status_at=timezone.now() - timedelta(days=1))
    for token in ("x" * 32, "bad token!", "", revoked.tracking_token, expired.tracking_token):
        assert both(token) == (None, None), token
    page, socket = both(recent.tracking_token)
    assert page is not None and socket is not None and socket.pk == page.pk  # type: ignore[attr-defined]
