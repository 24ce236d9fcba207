"""O6 (RELIABILITY.md) and issue #7's "PostgreSQL unreachable": a PostgreSQL cluster of our own
(initdb on a free port) is restarted with `pg_ctl restart -m immediate`, then stopped for a
while and started again, under mixed traffic from daphne and a Celery worker that both use it.

Must show: 503 with Retry-After while the database is away, never a 500; errors confined to
the outage (and recovery within 10 s of PostgreSQL accepting connections, then 0 errors: no
broken pooled connections); every event answered 200 is stored, and its message is sent once
(twice at most where the crash fell between the provider's accept and the record of the send,
whose commit does not wait for the WAL flush, see notifications.services._record_sent).

A send recorded in the last moments before a crash (its commit does not wait for the WAL
flush) is forgotten: the row is back to "sending" under its lease, and the sweeper sends it
again once the lease has run out. The lease is 8 s here instead of 120 s so that the test sees
it through.

Scaled for CI: about 20 requests/s from 6 clients instead of 100/s, a 4 s stop, 6 s of
traffic watched after each outage.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import psycopg
import pytest
from django.utils import timezone

from notifications.tasks import notifications_sweep
from tests.chaos.servers import beat_to, intake, on_redis, postgres_cluster, provider_calls, redis_server
from tests.notifications.conftest import upsert
from tests.services import celery_worker, daphne, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow, pytest.mark.chaos]

CLIENTS = 6
STOPPED_FOR = 4.0
RECOVERY = 10.0
OBSERVE = 6.0  # seconds of traffic watched after each outage


@dataclass
class Answer:
    at: float
    kind: str
    status: int  # 0: no HTTP answer at all
    retry_after: str | None
    reference: str = ""
    seconds: float = 0.0


class Traffic:
    """Clients in threads: a new delivery through the intake (a write that queues a message),
    its snapshot (a read) and /readyz, in turn, until stopped."""

    def __init__(self, base: str, tokens: list[str]) -> None:
        self.base, self.tokens = base, tokens
        self.answers: list[Answer] = []
        self.stop = threading.Event()
        self.refs = itertools.count()
        self.lock = threading.Lock()

    def client(self) -> None:
        with intake(self.base, timeout=15) as routing, httpx.Client(base_url=self.base, timeout=15) as http:
            for turn in itertools.count():
                if self.stop.is_set():
                    return
                kind = ("write", "read", "ready")[turn % 3]
                reference = f"PG-{next(self.refs)}" if kind == "write" else ""
                started = time.monotonic()
                try:
                    if kind == "write":
                        response = routing.post(upsert(reference, at=timezone.now()))
                    elif kind == "read":
                        response = http.get(f"/t/{self.tokens[turn % len(self.tokens)]}/state/")
                    else:
                        response = http.get("/readyz")
                    answer = Answer(time.monotonic(), kind, response.status_code,
                                    response.headers.get("Retry-After"), reference,
                                    time.monotonic() - started)  # fmt: skip
                except httpx.HTTPError:
                    answer = Answer(time.monotonic(), kind, 0, None, reference, time.monotonic() - started)
                with self.lock:
                    self.answers.append(answer)
                time.sleep(0.25)

    def run(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.client, daemon=True) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        return threads


def test_postgres_restarted_and_stopped_under_traffic_gives_503s_only_while_away_and_loses_nothing(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    with postgres_cluster("porchlight_chaos") as cluster, redis_server(tmp_path / "redis") as broker:
        db = cluster.url("porchlight_chaos")
        env = on_redis(broker, DATABASE_URL=db, SMS_BACKEND="tests.chaos.providers.SMSBackend",
                       SLOW_PROVIDER_PATH=str(calls), DATABASE_POOL_MAX="8",
                       NOTIFY_LEASE_SECONDS="8")  # fmt: skip
        with (
            daphne(**env) as base,
            celery_worker(**env),
            beat_to(broker.url, notifications_sweep, every=1.0),
            intake(base) as routing,
        ):
            assert routing.post([upsert(f"SEED-{n}", at=timezone.now()) for n in range(5)]).status_code == 200
            with psycopg.connect(db) as conn:
                tokens = [row[0] for row in conn.execute("SELECT tracking_token FROM tracking_delivery")]
            traffic = Traffic(base, tokens)
            threads = traffic.run()
            time.sleep(3)  # steady traffic first
            outages: list[tuple[float, float]] = []
            for fault in ("restart", "stop"):
                down = time.monotonic()
                if fault == "restart":
                    cluster.restart_immediate()  # returns once it accepts connections again
                else:
                    cluster.stop_immediate()
                    time.sleep(STOPPED_FOR)
                    cluster.start()
                wait_for(cluster.accepts, timeout=30, what="PostgreSQL accepting connections")
                outages.append((down, time.monotonic()))
                time.sleep(OBSERVE)  # traffic through the recovery and after
            traffic.stop.set()
            for thread in threads:
                thread.join()
            answers = traffic.answers
            stored = {a.reference for a in answers if a.kind == "write" and a.status == 200}
            with psycopg.connect(db) as conn:

                def sent() -> int:
                    row = conn.execute(
                        "SELECT count(*) FROM notifications_notification n JOIN tracking_delivery d "
                        "ON d.id = n.delivery_id WHERE d.reference = ANY(%s) AND n.status = 'sent'",
                        [list(stored)],
                    ).fetchone()
                    return int(row[0]) if row else 0

                try:
                    wait_for(
                        lambda: sent() == len(stored), timeout=60, what="every stored delivery's message"
                    )
                except AssertionError as error:
                    states = conn.execute(
                        "SELECT status, attempts, count(*) FROM notifications_notification GROUP BY 1, 2"
                    ).fetchall()
                    raise AssertionError(f"{error}: {len(stored)} stored; messages {states}") from None
                references = {r[0] for r in conn.execute("SELECT reference FROM tracking_delivery")}

    by_status = Counter((a.kind, a.status) for a in answers)
    failures = [a for a in answers if a.status != 200]
    assert stored and stored <= references  # every event answered 200 is stored
    assert not [a for a in failures if a.status != 503], by_status  # 503, never a 500 or a dropped socket
    assert all(a.retry_after for a in failures)  # ... each with Retry-After

    # Each outage's window: from the fault to RECOVERY s after PostgreSQL accepted connections
    # again, or to the next fault if that comes first.
    windows = [
        (start, min(end + RECOVERY, outages[i + 1][0] if i + 1 < len(outages) else end + RECOVERY), end)
        for i, (start, end) in enumerate(outages)
    ]
    assert all(any(lo <= a.at <= hi for lo, hi, _ in windows) for a in failures), "an error outside an outage"
    recoveries = [max([0.0] + [a.at - end for a in failures if lo <= a.at <= hi]) for lo, hi, end in windows]
    assert max(recoveries) < RECOVERY
    counted = provider_calls(calls)
    twice = [pk for pk, n in counted.items() if n > 1]
    assert all(n <= 2 for n in counted.values())
    print(
        f"\nO6: {len(answers)} requests, {len(stored)} deliveries stored (all {len(stored)} messages sent, "
        f"{len(twice)} twice); {len(failures)} answered 503 with Retry-After, 0 others; "
        f"outages {[round(end - start, 1) for start, end in outages]} s; last error after PostgreSQL "
        f"accepted connections: {[round(r, 1) for r in recoveries]} s; slowest answer "
        f"{max(a.seconds for a in answers):.1f} s; {dict(by_status)}"
    )
