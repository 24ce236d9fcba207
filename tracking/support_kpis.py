"""The support KPI page: how deliveries and messages went over a date range, day by day.

Each figure says what it counts (the `help` line on the page). Days are UTC dates (TIME_ZONE).
One grouped query per source, whatever the range.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db.models import Avg, Count, Exists, F, OuterRef, Q, QuerySet
from django.db.models.functions import TruncDate

from notifications.models import Notification
from notifications.models import Status as MessageStatus
from tracking.models import Delivery, InboundEvent, Status, SupportAction, SupportActionKind

MAX_DAYS = 366
MESSAGE_GOOD = (MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.COMPLAINED)
MESSAGE_BAD = (MessageStatus.UNDELIVERED, MessageStatus.FAILED, MessageStatus.BOUNCED, MessageStatus.DEAD)
CHART_WIDTH = 600
CHART_HEIGHT = 120


@dataclass(frozen=True)
class Bar:
    day: date
    value: float | None
    x: float
    y: float
    width: float
    height: float
    label: str


@dataclass(frozen=True)
class Kpi:
    name: str
    value: float | None
    unit: str  # "%", "/5", "per 100"
    help: str
    count_label: str
    bars: list[Bar]

    @property
    def display(self) -> str:
        if self.value is None:
            return "no data"
        return f"{self.value:.1f}{'' if self.unit == 'per 100' else self.unit}"


def kpi_range(start: str | None, end: str | None, *, today: date) -> tuple[date, date, str]:
    """The range asked for (YYYY-MM-DD, inclusive), or the last 14 days with a reason why."""
    default = (today - timedelta(days=13), today)
    if not start and not end:
        return (*default, "")
    try:
        first, last = date.fromisoformat(str(start or "")[:10]), date.fromisoformat(str(end or "")[:10])
    except ValueError:
        return (*default, "Dates must look like 2026-11-21: showing the last 14 days.")
    if last < first:
        first, last = last, first
    if first.year < 2000 or last.year > 2999:
        return (*default, "Dates must be between 2000 and 2999: showing the last 14 days.")
    if (last - first).days >= MAX_DAYS:
        return (
            last - timedelta(days=MAX_DAYS - 1),
            last,
            f"At most {MAX_DAYS} days: the range was shortened.",
        )
    return first, last, ""


def _bounds(first: date, last: date) -> tuple[datetime, datetime]:
    return (
        datetime.combine(first, datetime.min.time(), tzinfo=UTC),
        datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=UTC),
    )


def _per_day(queryset: QuerySet[Any], field: str, **aggregates: Any) -> dict[date, dict[str, Any]]:
    rows = queryset.annotate(day=TruncDate(field, tzinfo=UTC)).values("day").annotate(**aggregates)
    return {row["day"]: row for row in rows}


def support_kpis(*, first: date, last: date) -> list[Kpi]:
    start, end = _bounds(first, last)
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    failed_before = InboundEvent.objects.filter(
        delivery=OuterRef("pk"),
        type="delivery.status",
        result="accepted",
        payload__data__status="attempt_failed",
    )
    finished = _per_day(
        Delivery.objects.filter(
            status__in=[Status.DELIVERED, Status.ATTEMPT_FAILED, Status.RETURNED],
            status_at__gte=start,
            status_at__lt=end,
        ).annotate(failed_once=Exists(failed_before)),
        "status_at",
        attempted=Count("pk"),
        delivered=Count("pk", filter=Q(status=Status.DELIVERED)),
        windowed=Count("pk", filter=Q(status=Status.DELIVERED, window_end__isnull=False)),
        on_time=Count(
            "pk", filter=Q(status=Status.DELIVERED, window_end__isnull=False, status_at__lte=F("window_end"))
        ),
        first_attempt=Count("pk", filter=Q(status=Status.DELIVERED, failed_once=False)),
    )
    messages = _per_day(
        Notification.objects.filter(created_at__gte=start, created_at__lt=end),
        "created_at",
        good=Count("pk", filter=Q(status__in=MESSAGE_GOOD)),
        ended=Count("pk", filter=Q(status__in=MESSAGE_GOOD + MESSAGE_BAD)),
    )
    ratings = _per_day(
        Delivery.objects.filter(feedback_at__gte=start, feedback_at__lt=end, rating__isnull=False),
        "feedback_at",
        rated=Count("pk"),
        mean=Avg("rating"),
    )
    contacts = _per_day(
        SupportAction.objects.filter(kind=SupportActionKind.CONTACT, at__gte=start, at__lt=end),
        "at",
        n=Count("pk"),
    )
    created = _per_day(
        Delivery.objects.filter(created_at__gte=start, created_at__lt=end), "created_at", n=Count("pk")
    )

    def ratio(source: dict[date, dict[str, Any]], top: str, bottom: str, scale: float = 100.0) -> _Series:
        return _Series(
            {day: (float(row[top]), float(row[bottom])) for day, row in source.items()},
            scale,
        )

    def cross(top: dict[date, dict[str, Any]], bottom: dict[date, dict[str, Any]]) -> _Series:
        days_ = set(top) | set(bottom)
        pairs = {d: (float(top.get(d, {}).get("n", 0)), float(bottom.get(d, {}).get("n", 0))) for d in days_}
        return _Series(pairs, 100.0)

    mean_rating = _Series(
        {
            day: (float(row["mean"]) * float(row["rated"]), float(row["rated"]))
            for day, row in ratings.items()
        },
        1.0,
    )
    return [
        ratio(finished, "on_time", "windowed").kpi(
            "On-time rate",
            "%",
            days,
            "Delivered by the end of their window, of the deliveries with a window delivered that day.",
            "delivered with a window",
        ),
        ratio(finished, "first_attempt", "attempted").kpi(
            "First-attempt success",
            "%",
            days,
            "Delivered with no failed attempt before, of those delivered, failed or returned that day.",
            "attempted",
        ),
        ratio(messages, "good", "ended").kpi(
            "Message delivery rate",
            "%",
            days,
            "Accepted or delivered by the provider, of the messages written that day that reached an end "
            "(pending and skipped ones left out).",
            "messages",
        ),
        mean_rating.kpi(
            "Average rating",
            "/5",
            days,
            "Customers' ratings given that day (1 to 5).",
            "ratings",
            ceiling=5.0,
        ),
        cross(contacts, created).kpi(
            '"Where is my order" contacts',
            "per 100",
            days,
            "Contacts recorded by support, per 100 deliveries created the same day.",
            "deliveries created",
        ),
    ]


@dataclass(frozen=True)
class _Series:
    """Per day (numerator, denominator); the value is scale * sum(num) / sum(den)."""

    pairs: dict[date, tuple[float, float]]
    scale: float

    def kpi(
        self,
        name: str,
        unit: str,
        days: list[date],
        help: str,
        count_label: str,
        ceiling: float | None = None,
    ) -> Kpi:
        top = sum(num for num, _ in self.pairs.values())
        bottom = sum(den for _, den in self.pairs.values())
        total = self.scale * top / bottom if bottom else None
        values = [self._value(day) for day in days]
        ceiling = ceiling or (100.0 if unit == "%" else None)
        return Kpi(name, total, unit, help, f"{int(bottom)} {count_label}", _bars(days, values, ceiling))

    def _value(self, day: date) -> float | None:
        num, den = self.pairs.get(day, (0.0, 0.0))
        return self.scale * num / den if den else None


def _bars(days: list[date], values: list[float | None], ceiling: float | None) -> list[Bar]:
    """Bars of an SVG chart drawn by the template (no script, no stylesheet from elsewhere)."""
    top = ceiling or max([v for v in values if v is not None] + [0.0]) or 1.0
    slot = CHART_WIDTH / max(len(days), 1)
    bars = []
    for n, (day, value) in enumerate(zip(days, values, strict=True)):
        height = 0.0 if value is None else CHART_HEIGHT * min(value, top) / top
        bars.append(
            Bar(
                day,
                value,
                round(n * slot + slot * 0.1, 2),
                round(CHART_HEIGHT - height, 2),
                round(max(slot * 0.8, 1.0), 2),
                round(height, 2),
                f"{day:%a %d %b}: {'no data' if value is None else f'{value:.1f}'}",
            )
        )
    return bars
