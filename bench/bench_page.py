"""The tracking page `GET /t/<token>/` on the production stack, against a bare Django view.

PostgreSQL (a fresh database) + REDIS_URL, one daphne serving config.asgi with /bench/hello
added (bench/urls.py). A delivery with a long timeline (40 status events) and a driver close
enough to be on the map. Interleaved rounds: the bare view, the page (no cookie, as a first
visit), the page again with its ETag (a revisit: 304), and the snapshot partial.
Goal (issue 3): the page at least 0.5x the bare view.

Then the same two requests served by gunicorn (WSGI, config/wsgi.py) beside it, for issue #7's
"serve pages from gunicorn, websockets from daphne": one gunicorn worker against one daphne
process (the same number of processes, so of cores it may use), gthread with one thread per
client connection so that keep-alive works as it does with daphne. docs/scaling.md has figures.

Knobs (environment): BENCH_ROUNDS (3), BENCH_SECONDS (4), BENCH_CONCURRENCY (8), BENCH_CLIENT.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import (
    LoadResult,
    Request,
    Row,
    daphnes,
    describe,
    event_request,
    free_port,
    fresh_database,
    interleave,
    load,
    median,
    port_open,
    post,
    print_table,
    process,
    ratios,
    redis_flush,
    require,
    server_env,
)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "8"))
TIMELINE = 40


def _at(minutes: float) -> str:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    return (start + timedelta(minutes=minutes)).isoformat()


def _seed(base: str) -> str:
    reference = "BENCH-PAGE-1"
    upsert: dict[str, Any] = {
        "id": "bench_page_up", "type": "delivery.upserted", "occurred_at": _at(0),
        "data": {
            "reference": reference,
            "customer": {"name": "Ana García", "phone": "+19565550123", "locale": "en"},
            "address": {"line1": "1201 Matamoros St", "city": "Laredo", "postcode": "78040", "country": "US",
                        "lat": 27.5036, "lon": -99.5075},
            "timezone": "America/Chicago", "zone": "laredo-central",
            "window": {"start": _at(200), "end": _at(320)},
        },
    }  # fmt: skip
    cycle = ["scheduled", "out_for_delivery", "arriving", "out_for_delivery"]
    statuses = [
        {
            "id": f"bench_page_st_{n}", "type": "delivery.status", "occurred_at": _at(1 + n),
            "data": {"reference": reference, "status": cycle[n % 4],
                     "driver": {"id": "bench_drv", "name": "Sam Ortiz"}},
        }
        for n in range(TIMELINE)
    ]  # fmt: skip
    eta = {
        "id": "bench_page_eta", "type": "delivery.eta", "occurred_at": _at(100),
        "data": {"reference": reference, "eta": _at(230), "stops_before": 2},
    }  # fmt: skip
    ping = {
        "id": "bench_page_ping", "type": "driver.location", "occurred_at": _at(101),
        "data": {"driver_id": "bench_drv", "lat": 27.51, "lon": -99.49, "recorded_at": _at(101)},
    }  # fmt: skip
    status, body = post(base, event_request({"events": [upsert, *statuses, eta, ping]}))
    if status != 200:
        raise SystemExit(f"seeding failed: {status} {body[:300]!r}")
    url = json.loads(body)["results"][0]["tracking_url"]
    return "/t/" + url.rstrip("/").rsplit("/", 1)[1] + "/"


def _etag(base: str, path: str) -> str:
    with urllib.request.urlopen(base + path, timeout=10) as response:
        return str(response.headers["ETag"])


@contextmanager
def gunicorn(env: dict[str, str]) -> Iterator[list[str]]:
    """One gunicorn worker serving config.wsgi (gthread, a thread per client connection)."""
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "config.wsgi:application", "-b", f"127.0.0.1:{port}",
        "-w", "1", "-k", "gthread", "--threads", str(CONCURRENCY), "--keep-alive", "30",
        "--log-level", "warning",
    ]  # fmt: skip
    with process(command, env=env, name=f"gunicorn-{port}", ready=lambda: port_open(port)):
        yield [f"http://127.0.0.1:{port}"]


def main() -> None:
    require(postgres=True, redis=True)
    redis_flush()
    with_gunicorn = shutil.which("gunicorn", path=os.path.dirname(sys.executable)) is not None
    with fresh_database("page") as db_url:
        env = server_env(database_url=db_url)
        with daphnes(1, env=env) as urls, gunicorn(env) if with_gunicorn else _none() as wsgi:
            page = _seed(urls[0])
            etag = _etag(urls[0], page)
            n = 200_000  # more than a run can send: the duration ends it

            def run(requests: list[Request], target: list[str] = urls) -> Any:
                return lambda _round: load(target, requests, concurrency=CONCURRENCY, duration=SECONDS)

            variants = {
                "bare": run([Request("GET", "/bench/hello")] * n),
                "page": run([Request("GET", page)] * n),
                "page304": run([Request("GET", page, {"If-None-Match": etag})] * n),
                "state": run([Request("GET", page + "state/")] * n),
            }
            if wsgi:
                variants["wsgi-bare"] = run([Request("GET", "/bench/hello")] * n, wsgi)
                variants["wsgi-page"] = run([Request("GET", page)] * n, wsgi)
            results: dict[str, list[LoadResult]] = interleave(variants, rounds=ROUNDS)
    bare = [r.rps for r in results["bare"]]
    rows = [Row("bare Django view", median(bare), "req/s", detail=describe(results["bare"]))]
    for name, label, goal in (
        ("page", "tracking page, first visit", 0.5),
        ("page304", "tracking page, revisit (304)", None),
        ("state", "live-state snapshot", None),
    ):
        ratio = median(ratios([r.rps for r in results[name]], bare))
        rows.append(
            Row(label, median([r.rps for r in results[name]]), "req/s", detail=describe(results[name]))
        )
        rows.append(
            Row(
                "  vs bare view",
                ratio,
                "x",
                goal=f">= {goal}x" if goal else "",
                met=(ratio >= goal and not any(r.failed for r in results[name])) if goal else None,
            )
        )
    rows.append(Row("tracking page p99", median([r.p(99) for r in results["page"]]), "ms"))
    if "wsgi-page" in results:
        for name, label, daphne_name in (
            ("wsgi-bare", "gunicorn: bare Django view", "bare"),
            ("wsgi-page", "gunicorn: tracking page, first visit", "page"),
        ):
            rps = [r.rps for r in results[name]]
            rows.append(Row(label, median(rps), "req/s", detail=describe(results[name])))
            rows.append(Row("  vs daphne", median(ratios(rps, [r.rps for r in results[daphne_name]])), "x"))
        rows.append(Row("gunicorn: tracking page p99", median([r.p(99) for r in results["wsgi-page"]]), "ms"))
    print_table(
        f"Tracking page ({CONCURRENCY} connections, {SECONDS:g} s x {ROUNDS} rounds, "
        f"{TIMELINE} timeline rows)",
        rows,
    )


@contextmanager
def _none() -> Iterator[list[str]]:
    yield []


if __name__ == "__main__":
    main()
