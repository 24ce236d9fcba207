"""Where the intake's time goes: py-spy samples one daphne process while it takes single
events (or batches) at full throughput. Not part of `make bench` (no bench_ prefix).

    pip install py-spy   # or PY_SPY=/path/to/py-spy
    python -m bench.profile_intake [single|batch|hello] [seconds]
    python -m bench.profile_intake variants [seconds]   # no py-spy needed
    python -m bench.profile_intake breakdown            # in-process ms per step (bench/breakdown.py)

`variants` serves the product whole and with one part off (live publish, notifications,
middleware; bench/variants.py), interleaved, and prints single events/s and batch pings/s of
each: the difference is what that part costs per request.

PROFILE_GIL=1 samples only the thread holding the GIL: where the CPU goes rather than the waits.
Prints the share of samples (all threads, idle excluded) spent under notable frames, and
writes the collapsed stacks to var/bench/profile-<kind>.txt (flamegraph.pl or speedscope read it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack

from bench.bench_intake import BATCH, batches, seed, singles
from bench.common import (
    LOGS,
    Request,
    daphnes,
    fresh_database,
    interleave,
    load,
    median,
    require,
    server_env,
)

# Frames worth naming: a sample counts once for each that appears anywhere in its stack.
MARKERS = {
    "whole request (django handler)": "get_response",
    "intake view": "events_receive",
    "signature check": "verify (tracking/signing.py",
    "json parse": "loads (json/",
    "parse_event": "parse_event",
    "events_ingest": "events_ingest",
    "transaction/commit": "__exit__ (django/db/transaction.py",
    "SQL execute (psycopg)": "execute (psycopg/cursor.py",
    "pool getconn/putconn": "psycopg_pool",
    "notifications_for_changes": "notifications_for_changes",
    "live publish (after commit)": "_send_safely",
    "async_to_sync": "async_to_sync",
    "sync_to_async thread hop": "sync_to_async",
    "middleware": "django/middleware",
    "JsonResponse": "JsonResponse",
    "daphne/twisted loop": "twisted/internet",
    "asyncio loop": "asyncio/base_events.py",
    "celery publish": "celery/",
    "redis": "redis/",
}


VARIANTS = {
    "product": {},
    "no group commit": {"BENCH_VARIANT": "alone"},
    "intake through Django": {"BENCH_VARIANT": "djangointake"},
    "Django's ASGI handler": {"BENCH_VARIANT": "stockhandler"},
    "no live publish": {"BENCH_VARIANT": "nolive"},
    "no notifications": {"BENCH_VARIANT": "nonotify"},
    "no gc.freeze()": {"BENCH_VARIANT": "nogcfreeze"},
    "no middleware": {"DJANGO_SETTINGS_MODULE": "bench.settings_nomiddleware"},
    "none of the three": {
        "BENCH_VARIANT": "nolive,nonotify",
        "DJANGO_SETTINGS_MODULE": "bench.settings_nomiddleware",
    },
}


def variants(seconds: float) -> None:
    # PROFILE_VARIANTS="product,no group commit" measures only those.
    wanted = set(filter(None, os.environ.get("PROFILE_VARIANTS", "").split(",")))
    chosen = {name: extra for name, extra in VARIANTS.items() if not wanted or name in wanted}
    with fresh_database("variants") as db_url, ExitStack() as stack:
        urls = {
            name: stack.enter_context(
                daphnes(1, env=server_env(database_url=db_url, **extra), app="bench.variants:application",
                        name=f"variant-{n}")
            )
            for n, (name, extra) in enumerate(chosen.items())
        }  # fmt: skip
        seed(next(iter(urls.values()))[0])
        for server in urls.values():
            load(server, singles(100), concurrency=8)
            load(server, [Request("GET", "/bench/hello")] * 100, concurrency=8)

        def runner(server: list[str]) -> Callable[[int], tuple[float, float, float]]:
            def run(_: int) -> tuple[float, float, float]:
                hello = load(
                    server,
                    [Request("GET", "/bench/hello")] * int(3000 * seconds),
                    concurrency=8,
                    duration=seconds,
                )
                single = load(server, singles(int(1500 * seconds)), concurrency=8, duration=seconds)
                batch = load(server, batches(int(40 * seconds)), concurrency=2, duration=seconds)
                return hello.rps, single.rps, batch.rps * BATCH

            return run  # fmt: skip

        rounds = interleave({name: runner(server) for name, server in urls.items()}, rounds=3)
    print(f"medians of 3 interleaved rounds x {seconds:g} s, one daphne each, c=8 (batches c=2)")
    print(f"  {'variant':<20} {'hello/s':>8} {'single/s':>9} {'ms/event':>9} {'pings/s':>8}")
    for name, values in rounds.items():
        hello, single, pings = (median([v[i] for v in values]) for i in range(3))
        print(f"  {name:<20} {hello:8.0f} {single:9.0f} {1000 / single if single else 0:9.2f} {pings:8.0f}")


def main() -> None:
    require(postgres=True, redis=True)
    kind = sys.argv[1] if len(sys.argv) > 1 else "single"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    if kind == "variants":
        variants(seconds)
        return
    if kind == "breakdown":
        with fresh_database("breakdown") as db_url:
            command = [sys.executable, "-m", "bench.breakdown", str(int(seconds * 30))]
            subprocess.run(command, env=server_env(database_url=db_url), check=False)
        return
    py_spy = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if not py_spy:
        print("py-spy is not installed (pip install py-spy), or set PY_SPY")
        sys.exit(1)
    out = LOGS / f"profile-{kind}.txt"
    with (
        fresh_database("profile") as db_url,
        daphnes(1, env=server_env(database_url=db_url, **_variant()), app=_app(), name="profile") as urls,
    ):
        seed(urls[0])
        pid = _daphne_pid(urls[0])
        requests: list[Request]
        if kind == "batch":
            requests, concurrency = batches(int(40 * seconds)), 2
        elif kind == "hello":
            requests, concurrency = [Request("GET", "/bench/hello")] * int(3000 * seconds), 8
        else:
            requests, concurrency = singles(int(1500 * seconds)), 8
        load(urls, requests[:100], concurrency=concurrency)  # warm up
        command = [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
                   "--format", "raw", "--output", str(out), "--nonblocking",
                   *(["--gil"] if os.environ.get("PROFILE_GIL") else [])]  # fmt: skip
        spy = threading.Thread(target=subprocess.run, args=(command,), kwargs={"capture_output": True})
        spy.start()
        result = load(urls, requests, concurrency=concurrency, duration=seconds)
        spy.join()
    unit = f"batches of {BATCH}" if kind == "batch" else "requests"
    print(f"{kind}: {result.rps:.0f} {unit}/s, p50 {result.p(50):.1f} ms, p99 {result.p(99):.1f} ms, "
          f"failed {result.failed}")  # fmt: skip
    summarise(out)


def _variant() -> dict[str, str]:
    # BENCH_VARIANT=... profiles that variant of bench/variants.py instead of the product.
    variant = os.environ.get("BENCH_VARIANT")
    return {"BENCH_VARIANT": variant} if variant else {}


def _app() -> str:
    return "bench.variants:application" if os.environ.get("BENCH_VARIANT") else "config.asgi:application"


def _daphne_pid(url: str) -> int:
    port = url.rsplit(":", 1)[1]
    found = subprocess.run(
        ["pgrep", "-f", f"daphne .*-p {port} "], capture_output=True, text=True, check=False
    )
    return int(found.stdout.split()[0])


def summarise(path: os.PathLike[str] | str) -> None:
    total = 0
    shares: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    with open(path) as handle:
        lines = handle.readlines()
    for line in lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        for name, marker in MARKERS.items():
            if marker in stack:
                shares[name] += count
        leaves[stack.split(";")[-1]] += count
    print(f"{total} samples (all threads, idle excluded); share of samples under each frame:")
    for name, n in shares.most_common():
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("hottest leaf frames:")
    for frame, n in leaves.most_common(12):
        print(f"  {100 * n / total:5.1f}%  {frame[:140]}")


if __name__ == "__main__":
    main()
