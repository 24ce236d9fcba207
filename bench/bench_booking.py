"""Slot booking under a rush (issue 5): 200 concurrent `POST /t/<token>/slots/` against 20 slots.

PostgreSQL (a fresh database) + REDIS_URL, two daphne processes serving config.asgi (the
guarantee must hold across processes, not only threads). Each round seeds a new zone with 20
slots of capacity 5 (100 places) and 200 deliveries through the signed intake, then fires 200
booking POSTs at once over 200 open connections, 10 per slot: exactly 100 must be booked (303),
100 told the slot is full (409), none 5xx, no slot above capacity, and every counter equal to
its booking rows and outbox rows. The reference, interleaved in the same run, is the slot page
GET at the same concurrency.

Knobs (environment): BENCH_ROUNDS (3), BENCH_CLIENTS (200), BENCH_SLOTS (20), BENCH_CAPACITY (5).
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import (
    LoadResult,
    Request,
    Row,
    daphnes,
    event_request,
    fresh_database,
    interleave,
    load,
    manage,
    median,
    post,
    print_table,
    redis_flush,
    require,
    server_env,
    sql,
)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "200"))
SLOTS = int(os.environ.get("BENCH_SLOTS", "20"))
CAPACITY = int(os.environ.get("BENCH_CAPACITY", "5"))

SEED_SLOTS = """
from datetime import datetime, timedelta, timezone
from scheduling.models import Slot, Zone
zone = Zone.objects.create(code={zone!r}, name={zone!r}, timezone="America/Chicago")
start = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) + timedelta(days=2)
hour = timedelta(hours=1)
slots = Slot.objects.bulk_create(
    Slot(zone=zone, start=start + 2 * i * hour, end=start + (2 * i + 1) * hour, capacity={capacity})
    for i in range({count})
)
print(" ".join(str(slot.pk) for slot in slots))
"""


def _seed_round(env: dict[str, str], base: str, number: int) -> tuple[str, list[int], list[str]]:
    """A zone with SLOTS slots, and CLIENTS deliveries in it; returns (zone, slot ids, tokens)."""
    zone = f"bench-booking-{number}"
    code = SEED_SLOTS.format(zone=zone, capacity=CAPACITY, count=SLOTS)
    output = manage(["shell", "-v", "0", "-c", code], env=env)
    slot_ids = [int(x) for x in output.strip().splitlines()[-1].split()]
    now = datetime.now(UTC).replace(microsecond=0)
    events: list[dict[str, Any]] = [
        {
            "id": f"bench-booking-{number}-{n}",
            "type": "delivery.upserted",
            "occurred_at": (now + timedelta(milliseconds=n)).isoformat(),
            "data": {
                "reference": f"BENCH-BOOK-{number}-{n:04d}",
                "customer": {"name": f"Customer {n}", "email": f"c{n}@example.com"},
                "address": {
                    "line1": f"{n} Main St",
                    "city": "Laredo",
                    "postcode": "78040",
                    "country": "US",
                    "lat": 27.5,
                    "lon": -99.5,
                },
                "timezone": "America/Chicago",
                "zone": zone,
            },
        }
        for n in range(CLIENTS)
    ]
    tokens: list[str] = []
    for chunk in range(0, len(events), 500):
        status, body = post(base, event_request({"events": events[chunk : chunk + 500]}))
        if status != 200:
            raise RuntimeError(f"seeding failed: {status} {body[:300]!r}")
        tokens += [r["tracking_url"].rstrip("/").rsplit("/", 1)[-1] for r in json.loads(body)["results"]]
    return zone, slot_ids, tokens


def _csrf(base: str, token: str) -> tuple[str, str]:
    """The csrftoken cookie and the form's token, as a browser would hold them."""
    with urllib.request.urlopen(f"{base}/t/{token}/slots/", timeout=30) as response:
        cookie = re.search(r"csrftoken=([^;]+)", response.headers.get("Set-Cookie", "")).group(1)  # type: ignore[union-attr]
        form = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.read().decode())
    return cookie, form.group(1)  # type: ignore[union-attr]


def _check(db_url: str, zone: str) -> dict[str, int]:
    """What the database holds for one round's zone."""
    ((over, mismatched, booked, places),) = sql(
        db_url,
        """
        SELECT count(*) FILTER (WHERE s.booked > s.capacity),
               count(*) FILTER (WHERE s.booked <> (
                   SELECT count(*) FROM scheduling_booking b WHERE b.slot_id = s.id)),
               coalesce(sum(s.booked), 0), coalesce(sum(s.capacity), 0)
        FROM scheduling_slot s JOIN scheduling_zone z ON z.id = s.zone_id WHERE z.code = %s
        """,
        [zone],
    )
    ((outbox,),) = sql(
        db_url,
        "SELECT count(*) FROM tracking_outboundevent o JOIN tracking_delivery d ON d.id = o.delivery_id "
        "WHERE d.zone_code = %s AND o.type = 'delivery.slot_booked'",
        [zone],
    )
    return {"over": over, "mismatched": mismatched, "booked": booked, "places": places, "outbox": outbox}


def main() -> None:
    require(postgres=True, redis=True)
    redis_flush()
    checks: list[dict[str, int]] = []
    with fresh_database("booking") as db_url:
        env = server_env(database_url=db_url)
        with daphnes(2, env=env) as urls:
            rounds = [_seed_round(env, urls[0], n) for n in range(ROUNDS)]
            cookie, form_token = _csrf(urls[0], rounds[0][2][0])
            headers = {"Cookie": f"csrftoken={cookie}", "Content-Type": "application/x-www-form-urlencoded"}

            def page(number: int) -> LoadResult:
                tokens = rounds[number][2]
                return load(urls, [Request("GET", f"/t/{t}/slots/") for t in tokens], concurrency=CLIENTS,
                            client="python")  # fmt: skip

            def book(number: int) -> LoadResult:
                zone, slot_ids, tokens = rounds[number]
                requests = [
                    Request("POST", f"/t/{t}/slots/", headers,
                            f"slot={slot_ids[i % len(slot_ids)]}&csrfmiddlewaretoken={form_token}".encode())
                    for i, t in enumerate(tokens)
                ]  # fmt: skip
                result = load(urls, requests, concurrency=CLIENTS, client="python")
                checks.append(_check(db_url, zone))
                return result

            results = interleave({"page": page, "book": book}, rounds=ROUNDS)
    booking = results["book"]
    expected_booked = min(CLIENTS, SLOTS * CAPACITY)
    statuses = [r.statuses for r in booking]
    booked_303 = [s.get(303, 0) for s in statuses]
    full_409 = [s.get(409, 0) for s in statuses]
    server_errors = sum(n for s in statuses for code, n in s.items() if code >= 500 or code == 0)
    other = sum(
        n for s in statuses for code, n in s.items() if code not in (303, 409) and code < 500 and code
    )
    overbooked = sum(c["over"] for c in checks)
    mismatched = sum(c["mismatched"] for c in checks)
    rows = [
        Row("slot page GET p50 (reference)", median([r.p(50) for r in results["page"]]), "ms"),
        Row("booking POST p50", median([r.p(50) for r in booking]), "ms"),
        Row("booking POST p99", median([r.p(99) for r in booking]), "ms"),
        Row("booked (303) per round", median(booked_303), "", goal=f"== {expected_booked}",
            met=all(n == expected_booked for n in booked_303), detail=f"rounds {booked_303}"),
        Row("slot full (409) per round", median(full_409), "", goal=f"== {CLIENTS - expected_booked}",
            met=all(n == CLIENTS - expected_booked for n in full_409), detail=f"rounds {full_409}"),
        Row("5xx or no answer", server_errors, "", goal="== 0", met=server_errors == 0),
        Row("other statuses", other, "", goal="== 0", met=other == 0),
        Row("slots above capacity", overbooked, "", goal="== 0", met=overbooked == 0),
        Row("counters != booking rows", mismatched, "", goal="== 0", met=mismatched == 0),
        Row("booked places in the database per round", median([c["booked"] for c in checks]), "",
            goal=f"== {expected_booked}", met=all(c["booked"] == expected_booked for c in checks),
            detail=f"of {SLOTS * CAPACITY} places; outbox rows {[c['outbox'] for c in checks]}"),
    ]  # fmt: skip
    print_table(
        f"Slot booking ({CLIENTS} concurrent POSTs, {SLOTS} slots x {CAPACITY} places, "
        f"2 daphnes, {ROUNDS} rounds)",
        rows,
    )


if __name__ == "__main__":
    main()
