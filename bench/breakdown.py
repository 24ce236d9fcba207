"""In-process timing of the intake's steps, without HTTP: run by `python -m bench.profile_intake
breakdown` in a server environment (DATABASE_URL of a fresh database, REDIS_URL set).

Wraps the steps events_ingest calls (by patching the names tracking.services looks up) with
wall-clock timers, then ingests single events and 500-ping batches, and prints milliseconds per
request spent in each step. What is left of the total is mostly the commit.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
django.setup()

import tracking.live  # noqa: E402
import tracking.services as services  # noqa: E402
from bench.bench_intake import BATCH, DELIVERIES, ping, single_event, upsert  # noqa: E402
from tracking import sql  # noqa: E402

spent: Counter[str] = Counter()


def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - started

    return wrapper


STEPS = {
    "parse_event (validation)": (services, "parse_event"),
    "_claim (insert-or-ignore event ids)": (services, "_claim"),
    "_apply_pings": (services, "_apply_pings"),
    "_apply_delivery_events": (services, "_apply_delivery_events"),
    "_add_tracking_urls": (services, "_add_tracking_urls"),
    "notifications_for_changes": (services, "notifications_for_changes"),
    "live publish (on commit)": (tracking.live, "_send_safely"),
}


def measure(label: str, requests: list[list[dict[str, Any]]]) -> None:
    spent.clear()
    update_many = sql.update_rows
    sql.update_rows = timed("sql.update_rows (result write-back, driver)", update_many)  # type: ignore[assignment]
    originals = {}
    for name, (module, attribute) in STEPS.items():
        originals[name] = getattr(module, attribute)
        setattr(module, attribute, timed(name, originals[name]))
    try:
        started = time.perf_counter()
        for events in requests:
            services.events_ingest(raw_events=events)
        total = time.perf_counter() - started
    finally:
        sql.update_rows = update_many  # type: ignore[assignment]
        for name, (module, attribute) in STEPS.items():
            setattr(module, attribute, originals[name])
    n = len(requests)
    rate = sum(map(len, requests)) / total
    print(f"\n{label}: {n} requests, {1000 * total / n:.2f} ms each ({rate:,.0f} events/s)")
    # _apply_* include their update_many calls; parse and publish are outside the transaction.
    inside = sum(
        spent[k] for k in ("_claim (insert-or-ignore event ids)", "_apply_pings", "_apply_delivery_events")
    )
    for name, seconds in spent.most_common():
        print(f"  {1000 * seconds / n:8.2f} ms  {100 * seconds / total:5.1f}%  {name}")
    outside = [k for k in STEPS if k not in ("_claim (insert-or-ignore event ids)", "_apply_pings",
                                             "_apply_delivery_events")]  # fmt: skip
    rest = total - inside - sum(spent[k] for k in outside)
    print(
        f"  {1000 * rest / n:8.2f} ms  {100 * rest / total:5.1f}%  the rest: result write-back, COMMIT, glue"
    )
    print("  (sql.update_rows is counted again inside _apply_pings / the rest)")


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    services.events_ingest(raw_events=[upsert(n) for n in range(DELIVERIES)])
    for n in range(30):  # warm up: drivers exist, caches filled
        services.events_ingest(raw_events=[single_event(n)])
    measure("single events", [[single_event(n)] for n in range(30, 30 + rounds)])
    measure(f"batches of {BATCH} pings", [[ping(b * BATCH + i) for i in range(BATCH)] for b in range(10)])


if __name__ == "__main__":
    main()
