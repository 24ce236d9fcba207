"""The support desk's one search box: every way a caller names a delivery finds it, exact
matches are never mixed with partial ones, and no text a client can send gives a 5xx."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications.models import Notification
from tests.tracking.support_factories import (
    CHANGELIST,
    found,
    logged_in,
    make_delivery,
    make_driver,
    support_user,
)
from tracking.models import EventResult, InboundEvent, OutboundEvent, OutboundStatus

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent() -> Client:
    return logged_in(support_user())


@pytest.fixture
def maria():
    make_delivery(
        reference="ORD-10046", customer_name="Mario Pérez", phone="+19565550999", email="mario@example.com"
    )
    return make_delivery(
        reference="ORD-10045",
        customer_name="María José Peña",
        phone="+19565550123",
        email="Maria.Pena@Example.com",
    )


@pytest.mark.parametrize("term", ["ORD-10045", "ord-10045", "  Ord-10045 "])
def test_a_reference_is_found_in_any_case(agent: Client, maria, term: str) -> None:
    assert found(agent, term) == [maria]


@pytest.mark.parametrize(
    "term", ["(956) 555-0123", "956-555-0123", "+1 956 555 0123", "9565550123", "19565550123", "+19565550123"]
)
def test_a_phone_number_is_found_in_any_common_format(agent: Client, maria, term: str) -> None:
    assert found(agent, term) == [maria]


@pytest.mark.parametrize("term", ["maria.pena@example.com", "MARIA.PENA@EXAMPLE.COM"])
def test_an_email_is_found_in_any_case(agent: Client, maria, term: str) -> None:
    assert found(agent, term) == [maria]


@pytest.mark.parametrize("term", ["maria jose pena", "MARÍA JOSÉ PEÑA", "pena maria", "josé"])
def test_a_name_is_found_without_caring_about_case_or_accents(agent: Client, maria, term: str) -> None:
    assert found(agent, term) == [maria]


def test_the_tracking_token_or_the_whole_tracking_url_finds_it(agent: Client, maria) -> None:
    token = maria.tracking_token
    for term in (token, f"https://porch.example/t/{token}/", f"http://testserver/t/{token}/slots/?x=1"):
        assert found(agent, term) == [maria], term


def test_an_exact_match_hides_partial_ones_and_says_it_is_exact(agent: Client, maria) -> None:
    make_delivery(reference="ORD-100450")  # contains ORD-10045
    response = agent.get(CHANGELIST, {"q": "ord-10045"})
    assert list(response.context["cl"].result_list) == [maria]
    assert b'data-search-outcome="exact"' in response.content
    assert b"Exact match (reference)." in response.content


def test_partial_matches_are_labelled_partial(agent: Client, maria) -> None:
    response = agent.get(CHANGELIST, {"q": "1004"})
    assert set(response.context["cl"].result_list) == set(
        make_delivery.__globals__["Delivery"].objects.filter(reference__startswith="ORD-1004")
    )
    assert b'data-search-outcome="partial"' in response.content


def test_a_lone_digit_or_two_letters_match_nothing_rather_than_everything(agent: Client, maria) -> None:
    for term in ("5", "1", "ma", "0"):
        response = agent.get(CHANGELIST, {"q": term})
        assert response.status_code == 200
        assert list(response.context["cl"].result_list) == [], term


@pytest.mark.parametrize(
    "term",
    [
        "%",
        "_",
        "%%%",
        "___",
        "' OR 1=1 --",
        "'; DROP TABLE tracking_delivery; --",
        ".*",
        "(.*)+$",
        "[a-z]{1000}",
        "\\",
        "\\%\\_",
        "\x00",
        "ORD\x00-10045",
        "x" * 10_000,
        "9" * 10_000,
        "😀",
        "María 😀 Peña",
        "🚚🚚🚚",
        "+",
        "()",
        "@",
        "@@@",
        "/t/../../etc/passwd",
        "\u202eord",
        "\ufffd",
    ],
)
def test_hostile_search_text_never_gives_a_5xx_nor_a_wrong_match(agent: Client, maria, term: str) -> None:
    response = agent.get(CHANGELIST, {"q": term})
    assert response.status_code == 200
    if "\x00" in term:
        # Django's search form refuses NUL: no search at all, the whole list, never "exact".
        assert b"data-search-outcome" not in response.content
    elif term == "María 😀 Peña":
        # The emoji is no part of any name: the words that are find her, as a partial match.
        assert list(response.context["cl"].result_list) == [maria]
        assert b'data-search-outcome="partial"' in response.content
    else:
        assert maria not in response.context["cl"].result_list, term


def test_a_nul_or_control_character_reaching_the_service_is_cleaned_not_sent_to_the_database() -> None:
    from tracking.models import Delivery
    from tracking.support import deliveries_search

    maria = make_delivery(reference="ORD-NUL-1")
    assert list(deliveries_search(queryset=Delivery.objects.all(), text="ORD-NUL-1\x00").queryset) == [maria]
    assert list(deliveries_search(queryset=Delivery.objects.all(), text="\x00\x01\t").queryset) == []


def test_filters_find_late_failed_today_undelivered_messages_and_outbound_that_gave_up(agent: Client) -> None:
    now = timezone.now()
    late = make_delivery(eta=now + timedelta(hours=5))  # window ends in 4 h
    on_time = make_delivery(eta=now + timedelta(hours=3))
    failed = make_delivery(status="attempt_failed", status_at=now)
    make_delivery(status="attempt_failed", status_at=now - timedelta(days=2))
    rescheduled = make_delivery(status="scheduled", status_at=now)  # failed this morning, booked again
    for n, (delivery, at) in enumerate([(rescheduled, now), (late, now - timedelta(days=2))]):
        InboundEvent.objects.create(
            event_id=f"evt-failed-{n}",
            type="delivery.status",
            reference=delivery.reference,
            delivery=delivery,
            payload={"data": {"status": "attempt_failed"}},
            result=EventResult.ACCEPTED,
            received_at=at,
            occurred_at=at,
        )
    Notification.objects.create(
        delivery=on_time,
        channel="sms",
        kind="received",
        recipient=on_time.phone,
        body="x",
        dedupe_key=f"{on_time.pk}:x",
        status="undelivered",
        next_attempt_at=now,
    )
    OutboundEvent.objects.create(
        event_id="pl_support_1",
        type="delivery.feedback",
        delivery=failed,
        data={},
        occurred_at=now,
        next_attempt_at=now,
        status=OutboundStatus.FAILED,
    )
    assert found(agent, "", late="yes") == [late]
    assert set(found(agent, "", failed_today="yes")) == {failed, rescheduled}
    assert found(agent, "", bad_messages="yes") == [on_time]
    assert found(agent, "", outbound_failed="yes") == [failed]
    assert len(found(agent, "", zone_code="laredo-central")) == 5


def queries(client: Client, params: dict[str, str]) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(CHANGELIST, params)
    assert response.status_code == 200
    return len(captured)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": "Customer"},
        {"q": "ORD-S"},
        {"late": "yes", "bad_messages": "yes"},
        {"outbound_failed": "yes", "failed_today": "yes", "status": "scheduled"},
    ],
)
def test_the_list_runs_a_constant_number_of_queries_for_1_or_50_deliveries(agent: Client, params) -> None:
    def add(n: int) -> None:
        for _ in range(n):
            delivery = make_delivery(driver=make_driver(), eta=timezone.now() + timedelta(hours=6))
            Notification.objects.create(
                delivery=delivery,
                channel="sms",
                kind="received",
                recipient=delivery.phone,
                body="x",
                dedupe_key=f"{delivery.pk}:q",
                status="dead",
                next_attempt_at=timezone.now(),
            )

    add(1)
    one = queries(agent, params)
    add(49)
    fifty = queries(agent, params)
    assert one == fifty, (params, one, fifty)


def test_the_list_has_a_date_hierarchy_and_search_results_skip_it(agent: Client, maria) -> None:
    assert b'class="toplinks"' in agent.get(CHANGELIST).content
    assert b'class="toplinks"' not in agent.get(CHANGELIST, {"q": "ORD-10045"}).content


def test_the_zone_filter_lists_the_zones_deliveries_have(agent: Client, maria) -> None:
    make_delivery(zone_code="laredo-north")
    make_delivery(zone_code="")
    choices = agent.get(CHANGELIST).content.decode()
    assert "?zone_code=laredo-central" in choices and "?zone_code=laredo-north" in choices
    assert "(no zone)" in choices
    assert found(agent, "", zone_code="laredo-north")[0].zone_code == "laredo-north"


def test_facet_counts_are_off_so_the_list_never_counts_every_filter_over_the_table(agent: Client) -> None:
    make_delivery()
    page = agent.get(CHANGELIST, {"_facets": "True"})
    assert page.status_code == 200 and b"Show counts" not in page.content
