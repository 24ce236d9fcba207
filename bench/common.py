"""Shared helpers for `make bench` (bench/bench_*.py, each run as `python -m bench.<name>`).

Benchmarks report numbers and error counts; they never assert. Rules (../shared/PERFORMANCE.md):
compare only against a baseline measured in the same run, interleaved A/B/A/B, median of at
least three rounds, and count every error, 5xx or lost message as a failed row.

The API, in the order a benchmark uses it:

    require(postgres=True, redis=True)      # prints why and exits SKIPPED if a service is missing
    with fresh_database("page") as db_url:  # porchlight_bench_page_<pid>, migrated, dropped after
        env = server_env(database_url=db_url)           # production stack: PG + REDIS_URL (db 7)
        with daphnes(2, env=env) as urls:                # N daphne processes on free ports
            requests = [Request("GET", "/t/abc/")]      # method, path, headers, body
            result = load(urls, requests, concurrency=16, duration=5)   # or rate=200
            result.rps, result.p(99), result.failed, result.statuses

    rounds = interleave({"bare": run_bare, "page": run_page}, rounds=3)   # A/B/A/B...
    ratio = median(ratios([r.rps for r in rounds["page"]], [r.rps for r in rounds["bare"]]))
    print_table("Page", [Row("page / bare view", ratio, "x", ">= 0.7x", ratio >= 0.7, describe(...))])

Also: `celery_worker(env=...)`, `event_request(document)` / `signed(body)` (signed intake POSTs),
`post(url, request)` for seeding, `sql(db_url, query)` to count rows, `log_count(pattern)` to grep
the logs of the servers this benchmark started, `sqlite_database(name)` for embedded-mode runs.
The load client is wrk (bench/wrk.py) for timed runs when installed, else the asyncio client in
bench/loadgen.py; set BENCH_CLIENT=python to never use wrk.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

# Shared with the test fixtures and `make test`; the benchmarks import them from here.
from tests.processes import free_port, port_open, reachable, running

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "var" / "bench"
# Where the benchmarks' own databases are created (a maintenance database on the server).
ADMIN_DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
SECRET = "bench-routing-secret"
# Exit code of a benchmark that skipped itself (a service is missing); bench/__main__ knows it.
SKIPPED = 3

T = TypeVar("T")
# Logs of the processes started by this benchmark (other benchmarks may run at the same time).
_our_logs: list[Path] = []


# --- services ---------------------------------------------------------------------------


def require(*, postgres: bool = False, redis: bool = False) -> None:
    """Exit with SKIPPED, saying what is missing, unless the services this benchmark needs answer."""
    missing = []
    if postgres and not reachable(ADMIN_DATABASE_URL):
        missing.append(f"PostgreSQL at {_public(ADMIN_DATABASE_URL)} (BENCH_DATABASE_URL)")
    if redis and not reachable(REDIS_URL):
        missing.append(f"Redis at {REDIS_URL} (BENCH_REDIS_URL)")
    if missing:
        print(f"SKIPPED: not reachable: {'; '.join(missing)}", flush=True)
        sys.exit(SKIPPED)


def _public(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    return urlunsplit((parts.scheme, f"{netloc}:{parts.port}" if parts.port else netloc, parts.path, "", ""))


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def _admin_connection() -> Any:
    import psycopg

    return psycopg.connect(ADMIN_DATABASE_URL.replace("postgres://", "postgresql://", 1), autocommit=True)


@contextmanager
def fresh_database(name: str, *, migrate: bool = True) -> Iterator[str]:
    """A new PostgreSQL database `porchlight_bench_<name>_<pid>`, migrated with manage.py; yields
    its DATABASE_URL and drops it at the end. The pid keeps two runs of one benchmark apart;
    databases left by runs whose process is gone are dropped first."""
    prefix = f"porchlight_bench_{re.sub(r'[^a-z0-9_]', '_', name.lower())}_"
    database = f"{prefix}{os.getpid()}"
    url = _with_database(ADMIN_DATABASE_URL, database)
    with _admin_connection() as admin:
        names = [row[0] for row in admin.execute("SELECT datname FROM pg_database").fetchall()]
        for stale in names:
            pid = stale.removeprefix(prefix)
            if stale.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
                admin.execute(f'DROP DATABASE IF EXISTS "{stale}" WITH (FORCE)')
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        if migrate:
            manage(["migrate", "--noinput", "-v", "0"], env=server_env(database_url=url, redis_url=""))
        yield url
    finally:
        with _admin_connection() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def sqlite_database(name: str) -> Iterator[str]:
    """A migrated SQLite file in a temporary folder (embedded mode); yields its DATABASE_URL."""
    with tempfile.TemporaryDirectory(prefix=f"porchlight-bench-{name}-") as folder:
        url = f"sqlite:///{folder}/db.sqlite3"
        manage(["migrate", "--noinput", "-v", "0"], env=server_env(database_url=url, redis_url=""))
        yield url


def sql(database_url: str, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on a benchmark's PostgreSQL database; return its rows."""
    import psycopg

    with psycopg.connect(database_url.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        cursor = conn.execute(query, params or None)  # type: ignore[arg-type]
        return list(cursor.fetchall()) if cursor.description else []


def redis_flush(url: str = REDIS_URL) -> None:
    """Empty the benchmarks' Redis database. `make bench` does it before each module (they run
    one at a time), so that no module's queued tasks reach the next one's worker; a module
    must not flush it itself, as another benchmark may be using it at that moment."""
    import redis

    redis.Redis.from_url(url).flushdb()


def server_env(*, database_url: str, redis_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a production-like server process: debug off, the bench URLconf
    (config.urls plus /bench/hello), the intake secret `SECRET`. redis_url "" means
    embedded mode (in-memory channel layer, eager Celery); None means REDIS_URL (db 7)."""
    redis_url = REDIS_URL if redis_url is None else redis_url
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_DEBUG")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="bench.settings",
        DJANGO_SECRET_KEY="bench-secret-key-not-for-production",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        PORCHLIGHT_ROUTING_SECRETS=SECRET,
        PORCHLIGHT_PUBLIC_URL="http://127.0.0.1:8000",
        DATABASE_URL=database_url,
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        SMS_BACKEND="notifications.backends.locmem.SMSBackend",
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


def manage(args: list[str], *, env: dict[str, str]) -> str:
    """Run `manage.py <args>`; return its output, or exit the benchmark with it on failure."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        print(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}", flush=True)
        sys.exit(1)
    return done.stdout


@contextmanager
def process(
    command: list[str], *, env: dict[str, str], name: str, ready: Callable[[], bool]
) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess logging to var/bench/<name>.log, waited for until `ready()`, stopped at the end."""
    _our_logs.append(LOGS / f"{name}.log")
    with running(command, env=env, ready=ready, log_path=LOGS / f"{name}.log", timeout=60) as proc:
        yield proc


@contextmanager
def daphnes(
    count: int, *, env: dict[str, str], app: str = "config.asgi:application", name: str = "daphne"
) -> Iterator[list[str]]:
    """`count` daphne processes serving `app` (one per port: daphne cannot share one), access
    log off; yields their base URLs. Logs: var/bench/<name>-<port>.log."""
    ports = [free_port() for _ in range(count)]
    with ExitStack() as stack:
        for port in ports:
            command = [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port), app]
            port_env = {
                **env,
                "PORCHLIGHT_PUBLIC_URL": env.get("PORCHLIGHT_PUBLIC_URL", f"http://127.0.0.1:{port}"),
            }
            stack.enter_context(
                process(command, env=port_env, name=f"{name}-{port}", ready=lambda p=port: port_open(p))  # type: ignore[misc]
            )
        yield [f"http://127.0.0.1:{port}" for port in ports]


@contextmanager
def celery_worker(
    *, env: dict[str, str], concurrency: int = 2, name: str = "celery"
) -> Iterator[subprocess.Popen[bytes]]:
    """A Celery worker on the env's Redis and database, waited for until it says ready."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{name}.log"
    log_path.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO",
        f"--concurrency={concurrency}", "--without-gossip", "--without-mingle",
        "-n", f"{name}-{os.getpid()}@%h",
    ]  # fmt: skip

    def ready() -> bool:
        return log_path.exists() and b"ready." in log_path.read_bytes()

    with process(command, env=env, name=name, ready=ready) as proc:
        yield proc


def log_count(pattern: str, *, since: dict[Path, int] | None = None) -> int:
    """How many lines of the logs of the processes this benchmark started contain `pattern`
    (regex), counting only what was written after `since` (from `log_marks()`) when given."""
    total = 0
    rx = re.compile(pattern.encode())
    for path in _our_logs:
        data = path.read_bytes()[(since or {}).get(path, 0) :]
        total += sum(1 for line in data.splitlines() if rx.search(line))
    return total


def log_marks() -> dict[Path, int]:
    return {path: path.stat().st_size for path in _our_logs}


# --- requests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def signed(body: bytes, *, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    """Headers of an intake POST, signed now (signatures are valid for 300 s: sign just before use)."""
    from tracking import signing

    return {
        "Content-Type": "application/json",
        signing.HEADER: signing.sign(secret=secret, body=body, timestamp=timestamp),
    }


def event_request(document: Any) -> Request:
    """A signed `POST /api/v1/events` of one EVENT or an `{"events": [...]}` envelope."""
    body = json.dumps(document, separators=(",", ":")).encode()
    return Request("POST", "/api/v1/events", signed(body), body)


def post(base_url: str, request: Request, *, timeout: float = 60) -> tuple[int, bytes]:
    """One request from this process (seeding, checks): (status, body)."""
    req = urllib.request.Request(
        base_url + request.path, data=request.body or None, method=request.method, headers=request.headers
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


# --- load -------------------------------------------------------------------------------


@dataclass
class LoadResult:
    sent: int
    statuses: Counter[int]  # status -> count; 0 means no HTTP answer
    errors: dict[str, int]  # client-side errors by kind
    elapsed: float  # seconds from the first request to the last answer
    latencies: list[float]  # seconds, one per answered or failed request (empty from wrk)
    quantiles: dict[float, float]  # percentile -> seconds (computed, or reported by wrk)
    client: str
    bodies: list[str] = field(default_factory=list)  # with keep_bodies: each answer's body

    @property
    def ok(self) -> int:
        return sum(count for status, count in self.statuses.items() if 200 <= status < 400)

    @property
    def failed(self) -> int:
        """Every request that did not get a 2xx/3xx: 4xx, 5xx and no answer alike."""
        return self.sent - self.ok

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def p(self, percent: float) -> float:
        """Latency percentile in milliseconds."""
        if percent in self.quantiles:
            return self.quantiles[percent] * 1000
        return percentile(self.latencies, percent) * 1000


def percentile(values: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(percent / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def wrk_available() -> bool:
    return os.environ.get("BENCH_CLIENT", "auto") != "python" and shutil.which("wrk") is not None


def load(
    urls: Sequence[str],
    requests: Sequence[Request],
    *,
    concurrency: int,
    rate: float | None = None,
    duration: float | None = None,
    timeout: float = 30.0,
    client: str = "auto",
    keep_bodies: bool = False,
) -> LoadResult:
    """Send `requests` (each once, in order) over `concurrency` keep-alive connections spread over
    `urls`, from a separate process; stop when they run out or after `duration` seconds.
    `rate` (req/s, open loop) and `keep_bodies` need the Python client; "auto" takes wrk for timed
    runs when installed."""
    # wrk always runs for its whole -d, even once the requests ran out: only timed runs use it.
    use_wrk = client == "wrk" or (
        client == "auto" and rate is None and not keep_bodies and bool(duration) and wrk_available()
    )
    if use_wrk:
        from bench.wrk import load_wrk

        return load_wrk(urls, requests, concurrency=concurrency, duration=duration or 10.0, timeout=timeout)
    spec = {
        "urls": list(urls),
        "requests": [(r.method, r.path, r.headers, r.body) for r in requests],
        "concurrency": concurrency,
        "rate": rate,
        "duration": duration,
        "timeout": timeout,
        "keep_bodies": keep_bodies,
    }
    with tempfile.TemporaryDirectory(prefix="porchlight-load-") as folder:
        spec_path, out_path = Path(folder) / "spec.pickle", Path(folder) / "out.json"
        spec_path.write_bytes(pickle.dumps(spec))
        subprocess.run(
            [sys.executable, "-m", "bench.loadgen", str(spec_path), str(out_path)], cwd=ROOT, check=True
        )
        out = json.loads(out_path.read_text())
    latencies = out["latencies"]
    return LoadResult(
        sent=out["sent"],
        statuses=Counter({int(k): v for k, v in out["statuses"].items()}),
        errors=out["errors"],
        elapsed=out["elapsed"],
        latencies=latencies,
        quantiles={q: percentile(latencies, q) for q in (50, 90, 99, 99.9)},
        client="python",
        bodies=out["bodies"],
    )


# --- rounds and reports -----------------------------------------------------------------


def interleave(variants: dict[str, Callable[[int], T]], *, rounds: int = 3) -> dict[str, list[T]]:
    """Run each variant once per round, in the given order (A/B/A/B...); results by variant."""
    results: dict[str, list[T]] = {name: [] for name in variants}
    for number in range(rounds):
        for name, run in variants.items():
            results[name].append(run(number))
    return results


def ratios(values: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Round-by-round ratios of two interleaved series (each round against its own baseline)."""
    return [v / b if b else 0.0 for v, b in zip(values, baseline, strict=True)]


@dataclass
class Row:
    name: str
    value: float
    unit: str = ""
    goal: str = ""  # e.g. ">= 0.7x", "< 50 ms", "== 1"
    met: bool | None = None  # None: no goal, or cannot tell
    detail: str = ""  # rounds, failed rows, client...


def section(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def print_table(title: str, rows: Sequence[Row]) -> None:
    """Figures with their goals, one line each; `met` shows as ok / MISSED."""
    section(title)
    width = max((len(r.name) for r in rows), default=10)
    for r in rows:
        whole = float(r.value).is_integer() and r.unit not in ("x", "ms")
        value = f"{r.value:,.0f}" if whole or abs(r.value) >= 100 else f"{r.value:,.2f}"
        verdict = "" if r.met is None else ("ok" if r.met else "MISSED")
        goal = f"goal {r.goal} {verdict}".strip() if r.goal else ""
        print(f"  {r.name:<{width}}  {value:>10} {r.unit:<8} {goal:<24} {r.detail}".rstrip(), flush=True)


def describe(results: Sequence[LoadResult]) -> str:
    """Rounds of one figure in brief: failed rows, status counts that are not 2xx, client."""
    failed = sum(r.failed for r in results)
    bad: Counter[int] = Counter()
    for r in results:
        bad.update({s: n for s, n in r.statuses.items() if not 200 <= s < 400})
    statuses = ", ".join(f"{'no answer' if s == 0 else s}: {n}" for s, n in sorted(bad.items()))
    return (
        f"failed {failed}"
        + (f" ({statuses})" if statuses else "")
        + f", {len(results)} rounds, {results[0].client if results else ''}"
    )
