"""The intake (`POST /api/v1/events`) on the production stack, against a bare Django view.

PostgreSQL (a fresh database) + REDIS_URL, daphne serving config.asgi with /bench/hello added
(bench/urls.py). Each round runs, interleaved: the bare view, single events (distinct, signed
delivery.status / delivery.eta / driver.location for seeded deliveries), and driver pings in
batches of 500. Then: 16 concurrent identical POSTs per event id (rows per id), a fixed-rate
run for latency below saturation, and embedded mode (SQLite WAL, BEGIN IMMEDIATE) under
concurrent writers from several processes, counting "database is locked".

Knobs (environment): BENCH_ROUNDS (3), BENCH_SECONDS (3), BENCH_SERVERS (daphne processes, 1),
BENCH_SQLITE_SERVERS (4), BENCH_CONCURRENCY (8), BENCH_CLIENT (auto|python).
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

from bench.common import (
    ADMIN_DATABASE_URL,
    REDIS_URL,
    LoadResult,
    Request,
    Row,
    daphnes,
    describe,
    event_request,
    fresh_database,
    interleave,
    load,
    log_count,
    log_marks,
    median,
    post,
    print_table,
    ratios,
    reachable,
    section,
    server_env,
    sql,
    sqlite_database,
    wrk_available,
)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
SERVERS = int(os.environ.get("BENCH_SERVERS", "1"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "8"))
DELIVERIES = 200
DRIVERS = 50
BATCH = 500
BATCH_CONCURRENCY = 2
IDENTICAL = 16
IDENTICAL_IDS = 10
# More requests than the fastest plausible run can use in SECONDS: each is sent at most once.
SINGLE_PER_ROUND = int(3000 * SECONDS)
BATCHES_PER_ROUND = int(60 * SECONDS)

GOAL_RATIO = 0.7
GOAL_P99_MS = 50.0
GOAL_PINGS = 10_000
# RELIABILITY.md W1: 1,000 identical deliveries over 50 connections, p95 ack under 250 ms.
STORM, STORM_CONCURRENCY, GOAL_STORM_P95_MS = 1000, 50, 250.0

_ids = count()
# Every event is newer than the last, so each one is applied (accepted), never stale.
_clock = count()
_epoch = datetime.now(UTC) - timedelta(hours=2)


def _now() -> str:
    return (_epoch + timedelta(milliseconds=next(_clock))).isoformat()


def _reference(n: int) -> str:
    return f"BENCH-{n:05d}"


def upsert(n: int) -> dict[str, Any]:
    return {
        "id": f"up-{n}-{next(_ids)}",
        "type": "delivery.upserted",
        "occurred_at": _now(),
        "data": {
            "reference": _reference(n),
            "customer": {"name": f"Customer {n}", "phone": f"+1956555{n:04d}", "email": f"c{n}@example.com"},
            "address": {
                "line1": f"{n} Main St",
                "city": "Laredo",
                "postcode": "78040",
                "country": "US",
                "lat": 27.5 + n / 10_000,
                "lon": -99.5,
            },
            "timezone": "America/Chicago",
            "zone": "laredo-central",
        },
    }


STATUSES = ("scheduled", "out_for_delivery", "arriving")


def ping(n: int) -> dict[str, Any]:
    recorded = _now()
    return {
        "id": f"ping-{next(_ids)}",
        "type": "driver.location",
        "occurred_at": recorded,
        "data": {
            "driver_id": f"drv-{n % DRIVERS}",
            "lat": 27.5 + (n % 1000) / 100_000,
            "lon": -99.5 + (n % 700) / 100_000,
            "heading": n % 360,
            "speed_mps": 8.5,
            "accuracy_m": 5,
            "recorded_at": recorded,
        },
    }


def single_event(n: int) -> dict[str, Any]:
    """The n-th single event: status, ETA and ping in turn, over the seeded deliveries."""
    kind = n % 3
    if kind == 2:
        return ping(n)
    reference = _reference(n % DELIVERIES)
    occurred = _now()
    if kind == 0:
        data: dict[str, Any] = {"reference": reference, "status": STATUSES[(n // 3) % len(STATUSES)]}
        if n % 2:
            data["driver"] = {"id": f"drv-{n % DRIVERS}", "name": "Sam Ortiz"}
        return {"id": f"st-{next(_ids)}", "type": "delivery.status", "occurred_at": occurred, "data": data}
    eta = (datetime.fromisoformat(occurred) + timedelta(minutes=30)).isoformat()
    return {
        "id": f"eta-{next(_ids)}",
        "type": "delivery.eta",
        "occurred_at": occurred,
        "data": {"reference": reference, "eta": eta, "stops_before": n % 10},
    }


def singles(how_many: int) -> list[Request]:
    # Signed now: a signature is good for 300 s, so each round prepares its own.
    return [event_request(single_event(n)) for n in range(how_many)]


def batches(how_many: int) -> list[Request]:
    return [event_request({"events": [ping(b * BATCH + i) for i in range(BATCH)]}) for b in range(how_many)]


def seed(url: str) -> None:
    status, body = post(url, event_request({"events": [upsert(n) for n in range(DELIVERIES)]}))
    results = json.loads(body).get("results", []) if status == 200 else []
    accepted = sum(1 for r in results if r.get("result") == "accepted")
    if accepted != DELIVERIES:
        print(f"seeding failed: HTTP {status}, {accepted}/{DELIVERIES} accepted: {body[:300]!r}", flush=True)
        sys.exit(1)


def rows_per_identical_id(db_url: str, urls: list[str]) -> tuple[list[int], list[LoadResult]]:
    """16 identical POSTs of one event at once (all connections open first), per event id."""
    counts, results = [], []
    for n in range(IDENTICAL_IDS):
        event = single_event(3 * n)  # a delivery.status: row locks and all
        event["id"] = f"idem-{n}-{next(_ids)}"
        request = event_request(event)
        results.append(load(urls, [request] * IDENTICAL, concurrency=IDENTICAL, client="python"))
        counts.append(
            sql(db_url, "SELECT count(*) FROM tracking_inboundevent WHERE event_id = %s", [event["id"]])[0][0]
        )
    return counts, results


def duplicate_storm(urls: list[str]) -> tuple[LoadResult, Counter[str]]:
    """W1: one status event POSTed 1,000 times over 50 connections; the results it got."""
    event = single_event(0)  # a delivery.status
    event["id"] = f"storm-{next(_ids)}"
    result = load(
        urls, [event_request(event)] * STORM, concurrency=STORM_CONCURRENCY, client="python", keep_bodies=True
    )
    outcomes: Counter[str] = Counter()
    for body in result.bodies:
        try:
            outcomes[json.loads(body)["results"][0]["result"]] += 1
        except (ValueError, KeyError, IndexError):
            outcomes["(no result)"] += 1
    return result, outcomes


def postgres_figures() -> list[Row]:
    with fresh_database("intake") as db_url:
        env = server_env(database_url=db_url)
        with daphnes(SERVERS, env=env, name="intake") as urls:
            seed(urls[0])
            hello = [Request("GET", "/bench/hello")] * SINGLE_PER_ROUND
            # Warm up both paths (imports, pools, caches) outside the measured rounds.
            load(urls, hello[:300], concurrency=CONCURRENCY)
            load(urls, singles(300), concurrency=CONCURRENCY)

            def run_bare(_: int) -> LoadResult:
                return load(urls, hello, concurrency=CONCURRENCY, duration=SECONDS)

            def run_single(_: int) -> LoadResult:
                return load(urls, singles(SINGLE_PER_ROUND), concurrency=CONCURRENCY, duration=SECONDS)

            def run_batch(_: int) -> LoadResult:
                return load(urls, batches(BATCHES_PER_ROUND), concurrency=BATCH_CONCURRENCY, duration=SECONDS)

            pings_before = sql(db_url, "SELECT count(*) FROM tracking_locationping")[0][0]
            marks = log_marks()
            rounds = interleave({"bare": run_bare, "single": run_single, "batch": run_batch}, rounds=ROUNDS)
            pings_after = sql(db_url, "SELECT count(*) FROM tracking_locationping")[0][0]

            # Latency below saturation: open loop at half the throughput single events reached.
            rate = max(10.0, round(median([r.rps for r in rounds["single"]]) / 2))
            paced = [
                load(urls, singles(int(rate * SECONDS)), concurrency=32, rate=rate, duration=SECONDS)
                for _ in range(ROUNDS)
            ]
            counts, identical = rows_per_identical_id(db_url, urls)
            storms = [duplicate_storm(urls) for _ in range(ROUNDS)]
            # The production layout on this machine: one more daphne, one per core, the same
            # batches per process in flight.
            with daphnes(1, env=env, name="intake-more") as more:
                load(urls + more, batches(4), concurrency=2 * BATCH_CONCURRENCY)
                per_core = [
                    load(urls + more, batches(BATCHES_PER_ROUND), concurrency=2 * BATCH_CONCURRENCY,
                         duration=SECONDS)
                    for _ in range(ROUNDS)
                ]  # fmt: skip
            server_errors = log_count(r" ERROR ", since=marks)
            publish_failures = log_count(r"live publish", since=marks)

    bare, single, batch = rounds["bare"], rounds["single"], rounds["batch"]
    bare_rps = median([r.rps for r in bare])
    single_ratio = median(ratios([r.rps for r in single], [r.rps for r in bare]))
    single_p99 = median([r.p(99) for r in single])
    paced_p99 = median([r.p(99) for r in paced])
    pings = median([r.rps * BATCH for r in batch])
    pings_more = median([r.rps * BATCH for r in per_core])
    batch_sent = sum(r.ok for r in batch) * BATCH
    worst = max(counts)
    storm_p95 = median([r.p(95) for r, _ in storms])
    storm_exact = all(o == {"accepted": 1, "duplicate": STORM - 1} for _, o in storms)
    client = "wrk" if wrk_available() else "python asyncio"
    return [
        Row("bare view (GET /bench/hello)", bare_rps, "req/s", detail=describe(bare)),
        Row("single events", median([r.rps for r in single]), "req/s", detail=describe(single)),
        Row("single events / bare view", single_ratio, "x", f">= {GOAL_RATIO}x", single_ratio >= GOAL_RATIO,
            "median of per-round ratios"),
        Row("bare view p50 / p99", median([r.p(50) for r in bare]), "ms",
            detail=f"p99 {median([r.p(99) for r in bare]):.1f} ms"),
        Row(f"single events p50 (c={CONCURRENCY})", median([r.p(50) for r in single]), "ms"),
        Row(f"single events p99 (c={CONCURRENCY})", single_p99, "ms", f"< {GOAL_P99_MS:.0f} ms",
            single_p99 < GOAL_P99_MS, "at full throughput"),
        Row(f"single events p99 at {rate:.0f}/s", paced_p99, "ms", f"< {GOAL_P99_MS:.0f} ms",
            paced_p99 < GOAL_P99_MS, f"open loop at half their throughput; {describe(paced)}"),
        Row(f"pings in batches of {BATCH}", pings, "pings/s", f">= {GOAL_PINGS:,}", pings >= GOAL_PINGS,
            f"c={BATCH_CONCURRENCY}; {describe(batch)}"),
        Row(f"pings in batches of {BATCH}, daphne x{SERVERS + 1}", pings_more, "pings/s",
            f">= {GOAL_PINGS:,}", pings_more >= GOAL_PINGS,
            f"one more daphne, c={2 * BATCH_CONCURRENCY}; {describe(per_core)}"),
        Row(f"batch of {BATCH} p50 / p99", median([r.p(50) for r in batch]), "ms",
            detail=f"p99 {median([r.p(99) for r in batch]):.1f} ms"),
        # wrk stops with batches in flight that the server still writes: rows >= answered.
        Row("ping rows written", pings_after - pings_before, "rows", f">= {batch_sent:,} answered",
            pings_after - pings_before >= batch_sent, "none lost"),
        Row(f"rows per event id, {IDENTICAL} identical POSTs", worst, "max", "== 1",
            worst == 1 and min(counts) == 1, f"{IDENTICAL_IDS} ids, rows {counts}; {describe(identical)}"),
        Row(f"W1 storm: {STORM:,} identical, c={STORM_CONCURRENCY}, p95", storm_p95, "ms",
            f"< {GOAL_STORM_P95_MS:.0f} ms", storm_p95 < GOAL_STORM_P95_MS and storm_exact,
            f"{median([r.rps for r, _ in storms]):.0f} req/s; 1 accepted + {STORM - 1} duplicate in "
            f"{sum(1 for _, o in storms if o == {'accepted': 1, 'duplicate': STORM - 1})} of {len(storms)} "
            f"storms; {describe([r for r, _ in storms])}"),
        Row("ERROR lines in server logs", server_errors, "", "== 0", server_errors == 0,
            f"daphne x{SERVERS}, client {client}"),
        Row("live publish failures logged", publish_failures, "", "== 0", publish_failures == 0,
            "tracking.live gave up (its timeout) or failed"),
    ]  # fmt: skip


SQLITE_SERVERS = int(os.environ.get("BENCH_SQLITE_SERVERS", "4"))
SQLITE_CONCURRENCY = 16


def sqlite_requests(how_many: int) -> Iterator[Request]:
    """Single events with a small batch of pings every fifth request: many short writers."""
    for n in range(how_many):
        if n % 5 == 4:
            yield event_request({"events": [ping(n * 20 + i) for i in range(20)]})
        else:
            yield event_request(single_event(n))


def sqlite_figures() -> list[Row]:
    with sqlite_database("intake") as db_url:
        env = server_env(database_url=db_url, redis_url="")
        with daphnes(SQLITE_SERVERS, env=env, name="intake-sqlite") as urls:
            seed(urls[0])
            marks = log_marks()
            results = [
                load(urls, list(sqlite_requests(int(1000 * SECONDS))), concurrency=SQLITE_CONCURRENCY,
                     duration=SECONDS, client="python")
                for _ in range(ROUNDS)
            ]  # fmt: skip
            locked = log_count("database is locked", since=marks)
            tracebacks = log_count(r" ERROR ", since=marks)
        # WAL is a property of the file, so the settings' init_command shows here.
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
            journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    server_errors = sum(n for r in results for s, n in r.statuses.items() if s >= 500)
    return [
        Row("requests/s (mixed single + 20-ping batches)", median([r.rps for r in results]), "req/s",
            detail=describe(results)),
        Row("p99", median([r.p(99) for r in results]), "ms"),
        Row('"database is locked" in server logs', locked, "", "== 0", locked == 0,
            f"journal_mode={journal}"),
        Row("5xx responses", server_errors, "", "== 0", server_errors == 0,
            f"ERROR lines in logs: {tracebacks}"),
    ]  # fmt: skip


def main() -> None:
    title = (
        f"Intake on PostgreSQL + Redis: daphne x{SERVERS}, c={CONCURRENCY}, {ROUNDS} rounds x {SECONDS:g} s "
        "interleaved bare/single/batch, medians"
    )
    if reachable(ADMIN_DATABASE_URL) and reachable(REDIS_URL):
        print_table(title, postgres_figures())
    else:
        section(title)
        print(f"  SKIPPED: needs PostgreSQL ({ADMIN_DATABASE_URL}) and Redis ({REDIS_URL})", flush=True)
    print_table(
        f"Intake in embedded mode: SQLite WAL + BEGIN IMMEDIATE, {SQLITE_SERVERS} daphne processes, "
        f"{SQLITE_CONCURRENCY} concurrent writers",
        sqlite_figures(),
    )


if __name__ == "__main__":
    main()
