"""Real services for tests: daphne, a Celery worker and Chromium, as subprocesses that share
the test database (production pass: PostgreSQL + Redis).

Tests that use them need committed data: mark them `django_db(transaction=True)` and
`postgres`, `redis`. Where a service is missing the test is skipped with what to install,
and under CI (PORCHLIGHT_REQUIRE_SERVICES=1) it fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from tests.processes import ROOT, free_port, port_open, running


def need(condition: bool, what: str) -> None:
    """Skip (or, in CI, fail) a test whose real service is missing."""
    if condition:
        return
    if os.environ.get("PORCHLIGHT_REQUIRE_SERVICES"):
        pytest.fail(f"required in CI: {what}")
    pytest.skip(what)


def wait_for(
    condition: Callable[[], object], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> object:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


def database_url_for_subprocesses() -> str:
    """The URL of the test database pytest-django created, for subprocesses."""
    db = connection.settings_dict
    need(db["ENGINE"] == "django.db.backends.postgresql", "PostgreSQL (run the production pass)")
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return (
        f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"
    )


def service_env(**extra: str) -> dict[str, str]:
    need(bool(settings.REDIS_URL), "Redis (run the production pass)")
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_subprocesses(),
        "REDIS_URL": settings.REDIS_URL,
        "PYTHONUNBUFFERED": "1",
        "PORCHLIGHT_PUBLISH_IN_BACKGROUND": "1",
    }
    env.update(extra)
    return env


@contextmanager
def process(
    command: list[str], *, env: dict[str, str], ready: Callable[[], bool], name: str
) -> Iterator[subprocess.Popen[bytes]]:
    with running(command, env=env, ready=ready, log_path=ROOT / "var" / f"{name}.log") as proc:
        yield proc


@contextmanager
def daphne(**extra_env: str) -> Iterator[str]:
    """One daphne process serving config.asgi on a free port; yields its base URL."""
    (ROOT / "var").mkdir(exist_ok=True)
    port = free_port()
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"]
    env = service_env(PORCHLIGHT_PUBLIC_URL=f"http://127.0.0.1:{port}", **extra_env)
    with process(command, env=env, ready=lambda: port_open(port), name=f"daphne-{port}"):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def celery_worker(
    *, concurrency: int = 2, app: str = "config", **extra_env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker on the test Redis and the test database (`app`: another Celery app
    module, e.g. one with Celery's default settings for a control run)."""
    (ROOT / "var").mkdir(exist_ok=True)
    env = service_env(**extra_env)
    name = f"celery-{free_port()}"
    ready_file = ROOT / "var" / f"{name}.ready"
    ready_file.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "celery", "-A", app, "worker", "--loglevel=INFO",
        f"--concurrency={concurrency}", "--without-gossip", "--without-mingle", "-n", f"{name}@%h",
    ]  # fmt: skip
    log_path = ROOT / "var" / f"{name}.log"

    def ready() -> bool:
        return log_path.exists() and b"ready." in log_path.read_bytes()

    with process(command, env=env, ready=ready, name=name) as proc:
        yield proc


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    need(Path(path).exists(), "Debian's chromium (apt-get install chromium)")
    return path


CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@contextmanager
def fast_beat(task: Any, *, every: float = 1.0) -> Iterator[None]:
    """What `celery beat` does for `task` on its schedule, faster: publish it every `every`
    seconds (a periodic schedule, not a wait on a condition) until the block ends."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            task.delay()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
