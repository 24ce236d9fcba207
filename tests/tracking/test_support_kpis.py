"""The support KPI page: on-time rate, first-attempt success, message delivery rate, average
rating and "where is my order" contacts per 100 deliveries, over a date range, drawn as
server-side SVG charts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications.models import Notification
from tests.tracking.support_factories import logged_in, make_delivery, support_user
from tracking.models import EventResult, InboundEvent, SupportAction
from tracking.support_kpis import kpi_range, support_kpis

pytestmark = pytest.mark.django_db

KPIS = "/admin/tracking/delivery/kpis/"


def seed(day: date) -> None:
    noon = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
    window = {"window_start": noon - timedelta(hours=2), "window_end": noon + timedelta(hours=1)}
    delivered = [
        make_delivery(status="delivered", status_at=noon + timedelta(minutes=m), **window)
        for m in (0, 10, 20)
    ]
    make_delivery(status="delivered", status_at=noon + timedelta(hours=2), **window)  # late
    make_delivery(status="attempt_failed", status_at=noon, **window)
    InboundEvent.objects.create(
        event_id="evt-kpi-failed",
        type="delivery.status",
        reference=delivered[0].reference,
        delivery=delivered[0],
        payload={"data": {"status": "attempt_failed"}},
        result=EventResult.ACCEPTED,
        received_at=noon,
        occurred_at=noon - timedelta(hours=1),
    )
    for n, status in enumerate(["sent", "delivered", "delivered", "dead", "skipped", "queued"]):
        Notification.objects.create(
            delivery=delivered[0],
            channel="sms",
            kind="received",
            recipient="+19565550100",
            body="x",
            dedupe_key=f"kpi:{n}",
            status=status,
            next_attempt_at=noon,
        )
    for delivery, rating in zip(delivered[:2], (5, 4), strict=True):
        delivery.rating, delivery.feedback_at = rating, noon
        delivery.save(update_fields=["rating", "feedback_at"])
    SupportAction.objects.create(
        delivery=delivered[1],
        kind="contact",
        username="alice",
        nonce="kpi-contact",
        at=timezone.now(),
        detail={"channel": "phone"},
    )


def test_each_figure_counts_what_it_says() -> None:
    today = timezone.now().date()
    seed(today)
    kpis = {kpi.name: kpi for kpi in support_kpis(first=today - timedelta(days=1), last=today)}
    assert kpis["On-time rate"].value == pytest.approx(75.0)  # 3 of 4 delivered with a window
    assert kpis["First-attempt success"].value == pytest.approx(60.0)  # 3 of 5: one failed before
    assert kpis["Message delivery rate"].value == pytest.approx(75.0)  # 3 of 4 ended (skipped, queued out)
    assert kpis["Average rating"].value == pytest.approx(4.5)
    assert kpis['"Where is my order" contacts'].value == pytest.approx(20.0)  # 1 per 5 created
    bars = kpis["On-time rate"].bars
    assert len(bars) == 2 and bars[0].value is None and bars[1].value == pytest.approx(75.0)
    assert bars[1].height == pytest.approx(90.0)  # 75 % of the 120 px chart


def test_an_empty_range_says_no_data() -> None:
    kpis = support_kpis(first=date(2020, 1, 1), last=date(2020, 1, 31))
    assert all(kpi.value is None and kpi.display == "no data" for kpi in kpis)
    assert all(len(kpi.bars) == 31 for kpi in kpis)


def test_the_page_draws_svg_charts_without_scripts_in_constant_queries() -> None:
    agent = logged_in(support_user())
    today = timezone.now().date()

    def get(start: date) -> tuple[int, str]:
        with CaptureQueriesContext(connection) as captured:
            response = agent.get(KPIS, {"start": start.isoformat(), "end": today.isoformat()})
        assert response.status_code == 200
        return len(captured), response.content.decode()

    seed(today)
    short, html = get(today - timedelta(days=6))
    content = html.split('<div class="support-kpis">')[1].split("<!-- END SVGs -->")[0]
    assert content.count('role="img"') == 5 and "75.0%" in content and "4.5/5" in content
    assert "<script" not in content and "style=" not in content
    long, _ = get(today - timedelta(days=300))
    assert short == long


@pytest.mark.parametrize(
    "params",
    [
        {"start": "yesterday", "end": "2026-13-45"},
        {"start": "\x00", "end": "'; DROP TABLE x; --"},
        {"start": "2026-11-21", "end": "1900-01-01"},
        {"start": "0001-01-01", "end": "9999-12-31"},
        {"start": "2026-11-21" * 1000},
        {"start": "😀"},
    ],
)
def test_bad_ranges_fall_back_or_are_clamped_without_a_5xx(params) -> None:
    agent = logged_in(support_user())
    assert agent.get(KPIS, params).status_code == 200


def test_the_range_is_read_swapped_and_capped() -> None:
    today = date(2026, 11, 21)
    assert kpi_range(None, None, today=today) == (date(2026, 11, 8), today, "")
    assert kpi_range("2026-11-20", "2026-11-01", today=today)[:2] == (date(2026, 11, 1), date(2026, 11, 20))
    first, last, warning = kpi_range("2020-01-01", "2026-11-21", today=today)
    assert (last - first).days == 365 and "At most" in warning
    assert "Dates must look like" in kpi_range("nope", "", today=today)[2]
