"""`make bench` (`python -m bench [name ...]`): run the benchmarks one after the other.

Every bench/bench_*.py module (sorted), or those named (`intake` or `bench_intake`), runs as
`python -m bench.<name>` in its own process and prints its own section. A benchmark that
needs PostgreSQL or Redis and cannot reach them says so and exits SKIPPED; the run goes on.
The last lines say, per module, ok / skipped / failed; the exit status is 0 when all ran.
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench.common import ADMIN_DATABASE_URL, REDIS_URL, ROOT, SKIPPED, reachable


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


def main() -> int:
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
        code = subprocess.call([sys.executable, "-m", f"bench.{name}"], cwd=ROOT)
        outcome = {0: "ok", SKIPPED: "skipped"}.get(code, f"failed (exit {code})")
        outcomes.append((name, outcome, time.monotonic() - started))
    print("\n######## summary ########")
    for name, outcome, seconds in outcomes:
        print(f"  {name:<28} {outcome:<20} {seconds:6.1f} s")
    return 1 if any(outcome.startswith("failed") for _, outcome, _ in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
