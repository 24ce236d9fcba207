"""The seeding and measuring half of bench_support, run in a child process with the server's
settings. Reads {"count", "searches", "rounds", "requests"} as JSON on stdin; prints, per
search, the time of every request per round (ms), its query count and how many deliveries it
finds, as one JSON line (progress goes to stderr).

Not a benchmark module of its own: bench/__main__ runs only bench_*.py files.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from typing import Any

FIRST = [
    "María",
    "José",
    "Ana",
    "Lucía",
    "Zoë",
    "Jürgen",
    "François",
    "Chloé",
    "Mateo",
    "Sofía",
    "John",
    "Emily",
    "Øyvind",
    "Łukasz",
    "Renée",
    "Ángel",
    "Camila",
    "Diego",
    "Inés",
    "Noah",
    "Olivia",
    "Björn",
    "Nuño",
]
MIDDLE = ["José", "Elena", "", "Luis", "Marie", "", "Ann"]
LAST = [
    "Peña",
    "García",
    "Núñez",
    "López",
    "Martínez",
    "Smith",
    "Ångström",
    "Müller",
    "O'Brien",
    "Hernández",
    "Dubois",
    "Kowalski",
    "Jensen",
    "Rossi",
    "Silva",
    "Nguyễn",
    "Çelik",
    "Sánchez",
    "Pérez",
    "Gómez",
    "Díaz",
    "Brown",
    "Taylor",
    "Wilson",
    "Moore",
    "Jackson",
    "Ruiz",
    "Castro",
    "Vargas",
]
STATUSES = ["created", "scheduled", "out_for_delivery", "delivered", "attempt_failed"]
MESSAGE_STATUSES = ["sent", "delivered", "undelivered", "dead"]
BATCH = 5000


def name_of(i: int) -> str:
    middle = MIDDLE[(i // len(FIRST)) % len(MIDDLE)]
    last = LAST[(i // (len(FIRST) * len(MIDDLE))) % len(LAST)]
    return " ".join(part for part in (FIRST[i % len(FIRST)], middle, last) if part)


def seed(count: int) -> None:
    from django.db import connection
    from django.utils import timezone

    from notifications.models import Notification
    from tracking.models import Delivery

    now = timezone.now()
    started = time.monotonic()
    for first in range(1, count + 1, BATCH):
        rows = [
            Delivery(
                reference=f"ORD-{i:07d}",
                customer_name=name_of(i),
                phone=f"+1956{i:07d}",
                email=f"Customer{i}@Example.com" if i % 3 == 0 else f"customer{i}@example.com",
                address_line1=f"{i} Main St",
                city="Laredo",
                postcode="78040",
                country="US",
                lat=27.5,
                lon=-99.5,
                timezone="America/Chicago",
                zone_code=f"zone-{i % 12}",
                details_at=now,
                window_start=now + timedelta(hours=i % 96),
                window_end=now + timedelta(hours=i % 96 + 2),
                status=STATUSES[i % len(STATUSES)],
                status_at=now,
            )
            for i in range(first, min(first + BATCH, count + 1))
        ]
        Delivery.objects.bulk_create(rows)
        Notification.objects.bulk_create(
            Notification(
                delivery=d,
                channel="sms",
                kind="received",
                recipient=d.phone,
                body="x",
                dedupe_key=f"{d.pk}:received:sms",
                status=MESSAGE_STATUSES[d.pk % 4],
                next_attempt_at=now,
            )
            for d in rows
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(f"seeded {count:,} deliveries and messages in {time.monotonic() - started:.1f} s", file=sys.stderr)


def terms(count: int, searches: dict[str, str]) -> dict[str, str]:
    from tracking.models import Delivery

    n = count // 2 + 1
    digits = f"{n:07d}"
    token = Delivery.objects.values_list("tracking_token", flat=True).get(reference=f"ORD-{n:07d}")
    values = {"n": n, "a": digits[:3], "b": digits[3:], "token": token, "partial": digits[1:6]}
    return {"no search (reference)": "", **{name: t.format(**values) for name, t in searches.items()}}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    import django

    django.setup()
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from tests.tracking.support_factories import support_user
    from tracking.models import Delivery
    from tracking.support import deliveries_search

    seed(spec["count"])
    client = Client()
    client.force_login(support_user("bench-agent"))
    searches = terms(spec["count"], spec["searches"])
    results: dict[str, Any] = {name: {"rounds": [], "errors": 0} for name in searches}

    def get(term: str) -> Any:
        return client.get("/admin/tracking/delivery/", {"q": term} if term else {})

    for name, term in searches.items():  # warm up (templates, the pool, PostgreSQL's caches); count
        with CaptureQueriesContext(connection) as captured:
            get(term)
        results[name]["queries"] = len(captured)
        everything = Delivery.objects.all()
        results[name]["found"] = (
            deliveries_search(queryset=everything, text=term).queryset.count() if term else everything.count()
        )
    for _ in range(spec["rounds"]):
        for name, term in searches.items():  # interleaved: every search once per pass
            times = []
            for _ in range(spec["requests"]):
                started = time.perf_counter()
                response = get(term)
                times.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    results[name]["errors"] += 1
            results[name]["rounds"].append(times)
    return results


if __name__ == "__main__":
    outcome = measure(json.loads(sys.stdin.read()))
    print(json.dumps(outcome))
