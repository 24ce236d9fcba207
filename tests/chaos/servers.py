"""Servers the chaos tests own and break: redis-server (with or without AOF) and a throwaway
PostgreSQL cluster, each on a free loopback port, never the shared ones. Plus what the tests
need around them: a beat that publishes to a given broker, a signed HTTP client for the
intake, and a fake SMS provider's call counter.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis
from django.conf import settings

from tests.processes import ROOT, free_port
from tests.services import need, wait_for
from tracking import signing

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class RedisServer:
    """One redis-server of our own: `kill9()` and `start()` again on the same port and data
    folder, as a crashed and restarted Redis. `appendonly` turns on AOF with fsync every second;
    without it there is no persistence at all (no RDB snapshots either)."""

    def __init__(self, folder: Path, *, appendonly: bool) -> None:
        need(shutil.which("redis-server") is not None, "redis-server (apt-get install redis-server)")
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=1)

    def start(self) -> RedisServer:
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._pings, timeout=10, interval=0.05, what=f"redis-server on port {self.port}")
        return self

    def _pings(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def kill9(self) -> None:
        """SIGKILL: no shutdown save, no goodbye to clients."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@contextmanager
def redis_server(folder: Path, *, appendonly: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(folder, appendonly=appendonly).start()
    try:
        yield server
    finally:
        server.stop()


def on_redis(server: RedisServer, **extra: str) -> dict[str, str]:
    """Environment for daphne / the worker: broker, cache and channel layer on `server`."""
    return {
        "REDIS_URL": server.url,
        "CELERY_BROKER_URL": server.url,
        "CHANNEL_LAYER_PREFIX": f"chaos{server.port}",
        "NOTIFY_QUIET_HOURS": "",
        **extra,
    }


def _as_postgres(command: list[str]) -> list[str]:
    # initdb and the server refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class PostgresCluster:
    """A throwaway PostgreSQL cluster (initdb) on a free port: `restart_immediate()`,
    `stop_immediate()` and `start()` are the faults of O6."""

    def __init__(self) -> None:
        need((PG_BIN / "initdb").exists(), f"PostgreSQL 15 server binaries in {PG_BIN}")
        self.folder = Path(tempfile.mkdtemp(prefix="porchlight-chaos-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        subprocess.run(
            _as_postgres([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                          "--no-sync", "-E", "UTF8"]),
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str) -> None:
        # fsync off: a throwaway cluster, and `-m immediate` kills the server, not the OS, so what
        # it wrote is kept either way (what is lost is what it had not written yet).
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                          "-w", "-t", "30", *args]),
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def start(self) -> None:
        self._ctl("start")

    def stop_immediate(self) -> None:
        self._ctl("stop", "-m", "immediate")

    def restart_immediate(self) -> None:
        self._ctl("restart", "-m", "immediate")

    def accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url(), connect_timeout=1) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.Error:
            return False

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self._ctl("stop", "-m", "immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def postgres_cluster(database: str) -> Iterator[PostgresCluster]:
    """A started cluster with `database` created and migrated."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        import psycopg

        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        env = {**os.environ, "DATABASE_URL": cluster.url(database), "REDIS_URL": ""}
        env.pop("CELERY_BROKER_URL", None)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        yield cluster
    finally:
        cluster.destroy()


@contextmanager
def beat_to(broker_url: str, *tasks: Any, every: float = 1.0) -> Iterator[None]:
    """What `celery beat` does for `tasks`, every `every` seconds, publishing to `broker_url`
    (not the settings' broker). Like beat, a publish that fails is dropped and tried again at
    the next tick."""
    from config.celery import app

    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            for task in tasks:
                try:
                    with app.connection_for_write(broker_url) as connection:
                        task.apply_async(connection=connection, retry=False)
                except Exception:  # noqa: S112 (beat logs and carries on; so do we)
                    continue

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Intake:
    """The routing backend's side of the intake: signed POSTs to a live daphne."""

    def __init__(self, base_url: str, *, timeout: float = 30) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout)
        self.secret = settings.PORCHLIGHT_ROUTING_SECRETS[0]

    def post(self, events: list[dict[str, Any]] | dict[str, Any]) -> httpx.Response:
        body = json.dumps({"events": events} if isinstance(events, list) else events).encode()
        signature = signing.sign(secret=self.secret, body=body)
        headers = {"Content-Type": "application/json", signing.HEADER: signature}
        return self.http.post("/api/v1/events", content=body, headers=headers)

    def close(self) -> None:
        self.http.close()


@contextmanager
def intake(base_url: str, *, timeout: float = 30) -> Iterator[Intake]:
    client = Intake(base_url, timeout=timeout)
    try:
        yield client
    finally:
        client.close()


def provider_calls(folder: Path) -> Counter[int]:
    """Calls the fake SMS provider (tests/chaos/providers.py) took, per notification id."""
    if not folder.exists():
        return Counter()
    return Counter(int(path.name.split("-", 1)[0]) for path in folder.iterdir())


def wait_stable(count: Any, *, quiet: float, timeout: float) -> int:
    """Wait until `count()` has not changed for `quiet` seconds; return it. For controls that
    must show that something does NOT happen: nothing moves any more."""
    value, since = count(), time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now_value = count()
        if now_value != value:
            value, since = now_value, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return int(value)
    raise AssertionError(f"still changing after {timeout} s: {value}")


def worker_log(worker: subprocess.Popen[Any]) -> str:
    """What a tests.services.celery_worker wrote so far (its log is named after its node)."""
    args = [str(arg) for arg in worker.args]  # type: ignore[union-attr]
    name = args[args.index("-n") + 1].split("@", 1)[0]
    return (ROOT / "var" / f"{name}.log").read_text(errors="replace")
