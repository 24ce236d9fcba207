"""The tracking admin: lean changelists that stay constant in queries, the outbox rows that need
staff at a glance, and "retry now" through the outbox service."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client, TestCase
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.tracking.outbound_support import (  # noqa: F401 (the *_fixture names are fixtures)
    FakeRoutingBackend,
    backend_fixture,
    eager_fixture,
    make_delivery,
)
from tracking.models import Delivery, Driver, EventResult, InboundEvent, OutboundEvent, OutboundStatus

pytestmark = pytest.mark.django_db

CHANGELISTS = {
    "delivery": "/admin/tracking/delivery/",
    "driver": "/admin/tracking/driver/",
    "inboundevent": "/admin/tracking/inboundevent/",
    "outboundevent": "/admin/tracking/outboundevent/",
}


def make_rows(n: int) -> None:
    """n rows of every kind, with foreign keys set, so that an N+1 would show."""
    for _ in range(n):
        driver = Driver.objects.create(external_id=f"drv-{Driver.objects.count()}", name="Sam Driver")
        delivery = make_delivery(driver=driver, eta=timezone.now() + timedelta(hours=1))
        InboundEvent.objects.create(
            event_id=f"evt-{InboundEvent.objects.count()}",
            type="delivery.status",
            reference=delivery.reference,
            delivery=delivery,
            payload={},
            result=EventResult.ACCEPTED,
            received_at=timezone.now(),
        )
        make_outbound(delivery, status=OutboundStatus.FAILED, last_error="HTTP 503: unavailable")


def make_outbound(delivery: Delivery, **fields: Any) -> OutboundEvent:
    now = timezone.now()
    return OutboundEvent.objects.create(
        event_id=f"pl_{OutboundEvent.objects.count()}_{delivery.pk}",
        type="delivery.feedback",
        delivery=delivery,
        data={"reference": delivery.reference, "rating": 5, "comment": None},
        occurred_at=now,
        next_attempt_at=now,
        **fields,
    )


def queries_for(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, url
    return len(queries)


@pytest.mark.parametrize("name", list(CHANGELISTS))
def test_a_changelist_loads_for_a_superuser_with_a_constant_number_of_queries(
    admin_client: Client, name: str
) -> None:
    url = CHANGELISTS[name]
    make_rows(1)
    few = queries_for(admin_client, url)
    make_rows(20)
    many = queries_for(admin_client, url)
    assert few == many, f"{url}: {few} queries for 1 row, {many} for 21"
    assert many <= 12


@pytest.mark.parametrize("name", list(CHANGELISTS))
def test_each_change_page_is_read_only(admin_client: Client, name: str) -> None:
    make_rows(1)
    model = {
        "delivery": Delivery,
        "driver": Driver,
        "inboundevent": InboundEvent,
        "outboundevent": OutboundEvent,
    }
    pk = model[name].objects.get().pk
    page = admin_client.get(f"{CHANGELISTS[name]}{pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content  # view only: the routing backend owns these
    assert admin_client.get(f"{CHANGELISTS[name]}add/").status_code == 403


def test_the_delivery_search_finds_by_reference_name_email_phone_or_token(admin_client: Client) -> None:
    wanted = make_delivery(
        reference="ORD-FIND-1", customer_name="Grace Hopper", email="grace@example.org", phone="+15555550199"
    )
    make_delivery(
        reference="ORD-OTHER", customer_name="Alan Turing", email="alan@example.org", phone="+15555550111"
    )
    for term in ("ORD-FIND", "Grace", "grace@example.org", "+15555550199", wanted.tracking_token):
        page = admin_client.get(CHANGELISTS["delivery"], {"q": term})
        assert page.status_code == 200
        assert list(page.context["cl"].result_list) == [wanted], term


def test_the_rows_that_need_staff_are_visible_at_a_glance(admin_client: Client) -> None:
    delivery = make_delivery()
    failed = make_outbound(delivery, status=OutboundStatus.FAILED, attempts=312, last_error="HTTP 503: down")
    make_outbound(delivery, status=OutboundStatus.SENT)
    make_outbound(delivery, status=OutboundStatus.QUEUED)

    page = admin_client.get(CHANGELISTS["outboundevent"])
    html = page.content.decode()
    assert "needs staff" in html and "failed (needs staff) (1)" in html
    needs_staff = admin_client.get(CHANGELISTS["outboundevent"], {"needs_staff": "yes"})
    assert list(needs_staff.context["cl"].result_list) == [failed]
    assert "HTTP 503: down" in needs_staff.content.decode()


def test_retry_now_requeues_a_failed_row_and_sends_it(
    admin_client: Client, backend: FakeRoutingBackend
) -> None:
    delivery = make_delivery()
    long_ago = timezone.now() - timedelta(days=2)
    failed = make_outbound(delivery, status=OutboundStatus.FAILED, attempts=300, last_error="HTTP 503: down")
    OutboundEvent.objects.filter(pk=failed.pk).update(next_attempt_at=long_ago, created_at=long_ago)
    sent = make_outbound(delivery, status=OutboundStatus.SENT, attempts=1, sent_at=timezone.now())

    with TestCase.captureOnCommitCallbacks(execute=False) as callbacks:
        response = admin_client.post(
            CHANGELISTS["outboundevent"],
            {"action": "retry_now", "_selected_action": [failed.pk, sent.pk]},
            follow=True,
        )
    assert response.status_code == 200
    assert "1 event queued to be sent now." in response.content.decode()
    failed.refresh_from_db()
    assert failed.status == OutboundStatus.QUEUED
    assert failed.next_attempt_at <= timezone.now()
    sent.refresh_from_db()
    assert sent.status == OutboundStatus.SENT and sent.attempts == 1  # a sent row is never resent

    assert len(callbacks) == 1
    callbacks[0]()  # the commit: the send task runs
    failed.refresh_from_db()
    assert (failed.status, failed.attempts, failed.last_error) == (OutboundStatus.SENT, 301, "")
    assert backend.ids() == [failed.event_id]


def test_a_staff_member_who_may_only_view_cannot_retry(client: Client) -> None:
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_outboundevent"))
    client.force_login(viewer)
    failed = make_outbound(make_delivery(), status=OutboundStatus.FAILED)
    page = client.get(CHANGELISTS["outboundevent"])
    assert page.status_code == 200 and b"retry_now" not in page.content
    response = client.post(
        CHANGELISTS["outboundevent"], {"action": "retry_now", "_selected_action": [failed.pk]}
    )
    assert response.status_code in (200, 302)
    failed.refresh_from_db()
    assert failed.status == OutboundStatus.FAILED


def test_the_admin_asks_anonymous_visitors_to_log_in(client: Client) -> None:
    for url in CHANGELISTS.values():
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.parametrize(
    "query",
    [
        {"q": "\x00"},
        {"q": "a\x00b"},
        {"q": "x" * 10_000},
        {"q": "%' OR 1=1 --"},
        {"status": "bogus"},
        {"needs_staff": "maybe"},
        {"attempts__gt": "abc"},
        {"o": "99.-42"},
        {"p": "-1"},
        {"e": "\ud800".encode("utf-8", "surrogatepass").decode("latin-1")},
    ],
)
def test_hostile_changelist_parameters_never_give_a_5xx(admin_client: Client, query: dict[str, str]) -> None:
    make_rows(1)
    for url in CHANGELISTS.values():
        assert admin_client.get(url, query).status_code < 500, (url, query)
