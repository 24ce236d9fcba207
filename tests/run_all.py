"""`make test`: the whole suite on PostgreSQL + Redis (production mode), then in embedded mode.

The chaos tests (marker `chaos`: kill -9, pauses and restarts of real servers, the 2,000-socket
reconnect storm) are RELIABILITY.md's nightly runs: `make chaos` (`--chaos`) runs them alone on
PostgreSQL + Redis, and `make test` leaves them out, so that CI stays well under its 25 minutes
on a 2-core machine (with them it took about 28 there).

Where PostgreSQL or Redis cannot be reached, the production pass is skipped and the last
lines say so and what to install; under CI (CI=true) that is a failure, not a skip.
Each pass is a plain pytest run; pytest's exit code 5 (nothing collected) counts as a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.processes import reachable

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/porchlight")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
EMBEDDED_ONLY_OFF = "not postgres and not redis"


CHAOS = "--chaos" in sys.argv[1:]
PYTEST_ARGS = [arg for arg in sys.argv[1:] if arg != "--chaos"]


def run_pass(name: str, env: dict[str, str], extra: list[str]) -> int:
    print(f"\n===== {name} =====", flush=True)
    command = [sys.executable, "-m", "pytest", *extra, *PYTEST_ARGS]
    return subprocess.call(command, env=env)


def main() -> int:
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    base = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
    }
    base["PORCHLIGHT_REQUIRE_SERVICES"] = "1" if in_ci else ""
    problems: list[str] = []
    outcomes: list[tuple[str, int]] = []

    missing = [name for name, url in (("PostgreSQL", PG_URL), ("Redis", REDIS_URL)) if not reachable(url)]
    if missing:
        problems.append(
            f"Not run: the production pass (needs {' and '.join(missing)}). Install and start them "
            "(Debian: apt-get install postgresql redis-server), or point TEST_DATABASE_URL / "
            "TEST_REDIS_URL at running servers."
        )
    else:
        env = {**base, "DATABASE_URL": PG_URL, "REDIS_URL": REDIS_URL}
        marker = "chaos" if CHAOS else "not chaos"
        outcomes.append(
            (
                f"production (PostgreSQL + Redis), {marker}",
                run_pass(
                    f"production mode: PostgreSQL + Redis, {marker}", env, ["-m", marker, "--durations=15"]
                ),
            )
        )

    if not CHAOS:
        embedded = dict(base)
        outcomes.append(
            (
                "embedded (SQLite, in-memory)",
                run_pass("embedded mode: SQLite", embedded, ["-m", f"{EMBEDDED_ONLY_OFF} and not chaos"]),
            )
        )

    if not shutil.which("chromium"):
        problems.append("Browser tests were skipped: install Debian's chromium (apt-get install chromium).")

    print("\n===== summary =====")
    for name, code in outcomes:
        verdict = "passed" if code == 0 else ("ran no test" if code == 5 else f"FAILED (exit {code})")
        print(f"{name}: {verdict}")
    for problem in problems:
        print(problem)
    failed = any(code != 0 for _, code in outcomes)
    if problems and in_ci:
        print("CI=true: every pass must run here, so the above is a failure.")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
