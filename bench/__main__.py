"""`make bench` (`python -m bench [name ...]`): run the benchmarks one after the other.

Every bench/bench_*.py module (sorted), or those named (`intake` or `bench_intake`), runs as
`python -m bench.<name>` in its own process and prints its own section. A benchmark that
needs PostgreSQL or Redis and cannot reach them says so and exits SKIPPED; the run goes on.
The last lines say, per module, ok / skipped / failed; the exit status is 0 when all ran.
Redis db 7 (BENCH_REDIS_URL) is emptied before each module.
A module still running after BENCH_MODULE_TIMEOUT seconds (900; fan-out takes about 8 minutes)
is stopped and counted failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from bench.common import ADMIN_DATABASE_URL, REDIS_URL, ROOT, SKIPPED, reachable, redis_flush

# A benchmark that hangs must not hang `make bench`.
LIMIT = float(os.environ.get("BENCH_MODULE_TIMEOUT", "900"))


def modules(names: list[str]) -> list[str]:
    found = sorted(path.stem for path in (ROOT / "bench").glob("bench_*.py"))
    if not names:
        return found
    wanted = [name if name.startswith("bench_") else f"bench_{name}" for name in names]
    unknown = [name for name in wanted if name not in found]
    if unknown:
        print(f"no such benchmark: {', '.join(unknown)} (have: {', '.join(found)})")
        sys.exit(2)
    return wanted


def run(name: str) -> int | None:
    """Run one benchmark; None if it overran LIMIT. Stopped with SIGINT, so that its own
    cleanup (servers stopped, database dropped) runs, then killed if it does not stop."""
    proc = subprocess.Popen([sys.executable, "-m", f"bench.{name}"], cwd=ROOT)
    try:
        return proc.wait(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        print(f"\n{name} overran {LIMIT:.0f} s (BENCH_MODULE_TIMEOUT): stopping it", flush=True)
        return_code = None
    except KeyboardInterrupt:
        return_code = -signal.SIGINT
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if return_code is not None:
        raise KeyboardInterrupt
    return return_code


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # `timeout` or CI stopping make bench: clean up like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    selected = modules(sys.argv[1:])
    services = [
        f"PostgreSQL {'reachable' if reachable(ADMIN_DATABASE_URL) else 'NOT reachable'} "
        f"({ADMIN_DATABASE_URL.split('@')[-1]})",
        f"Redis {'reachable' if reachable(REDIS_URL) else 'NOT reachable'} ({REDIS_URL.split('@')[-1]})",
    ]
    print(f"Benchmarks: {', '.join(selected)}. {'; '.join(services)}.", flush=True)
    if "NOT" in " ".join(services):
        print(
            "Benchmarks that need the missing services are skipped (set BENCH_DATABASE_URL, BENCH_REDIS_URL)."
        )
    outcomes: list[tuple[str, str, float]] = []
    for name in selected:
        print(f"\n######## {name} ########", flush=True)
        started = time.monotonic()
        if reachable(REDIS_URL):
            redis_flush()  # nothing queued by one benchmark reaches the next one's worker
        code = run(name)
        outcome = {0: "ok", SKIPPED: "skipped", None: f"failed (over {LIMIT:.0f} s)"}.get(
            code, f"failed (exit {code})"
        )
        outcomes.append((name, outcome, time.monotonic() - started))
    print("\n######## summary ########")
    for name, outcome, seconds in outcomes:
        print(f"  {name:<28} {outcome:<20} {seconds:6.1f} s")
    return 1 if any(outcome.startswith("failed") for _, outcome, _ in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
