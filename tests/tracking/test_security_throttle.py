"""Guessing tokens is throttled per client IP, behind any number of trusted proxies, without
slowing a customer who refreshes a real link (issue #7 point 3, RELIABILITY T2)."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from django.core.cache import cache
from django.test import Client, RequestFactory
from django.utils import timezone

from config.middleware import client_ip
from tests.processes import ROOT, free_port, port_open
from tests.tracking.test_page import make_delivery, page_url

pytestmark = pytest.mark.django_db
LIMIT = 30


@pytest.fixture(autouse=True)
def _fresh_throttle() -> None:
    cache.clear()


def ip_of(remote: str, forwarded: str | None = None) -> str:
    meta = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded
    return client_ip(RequestFactory().get("/", **meta))


def test_without_trusted_proxies_the_client_is_remote_addr_whatever_it_forwards(settings: Any) -> None:
    settings.PORCHLIGHT_TRUSTED_PROXIES = 0
    assert ip_of("198.51.100.7") == "198.51.100.7"
    assert ip_of("198.51.100.7", "203.0.113.9") == "198.51.100.7"


def test_behind_trusted_proxies_the_client_is_the_address_they_saw(settings: Any) -> None:
    settings.PORCHLIGHT_TRUSTED_PROXIES = 1
    assert ip_of("10.0.0.2", "203.0.113.9") == "203.0.113.9"
    # What the client itself wrote stands to the left and is never believed.
    assert ip_of("10.0.0.2", "1.2.3.4, 203.0.113.9") == "203.0.113.9"
    assert ip_of("10.0.0.2", " 2001:db8::1 ") == "2001:db8::1"
    settings.PORCHLIGHT_TRUSTED_PROXIES = 2  # a CDN, then the load balancer
    assert ip_of("10.0.0.2", "6.6.6.6, 203.0.113.9, 192.0.2.50") == "203.0.113.9"


@pytest.mark.parametrize(
    "forwarded",
    [None, "", "not-an-ip", "203.0.113.9, ", "1.2.3.4; rm -rf /", ",".join(["1.1.1.1"] * 10_000) + ",junk"],
)
def test_a_missing_or_malformed_forwarded_header_counts_as_the_proxy(
    settings: Any, forwarded: str | None
) -> None:
    settings.PORCHLIGHT_TRUSTED_PROXIES = 1
    assert ip_of("10.0.0.2", forwarded) == "10.0.0.2"


def miss(client: Client, n: int, **headers: str) -> int:
    return client.get(f"/t/{'g' * 22}{n:010d}/", headers=headers).status_code


def test_behind_a_load_balancer_the_limit_is_per_client_and_a_spoofed_header_does_not_reset_it(
    settings: Any,
) -> None:
    settings.PORCHLIGHT_TRUSTED_PROXIES = 1
    balancer = Client(REMOTE_ADDR="10.0.0.2")  # every request arrives from the load balancer
    for n in range(LIMIT):
        assert miss(balancer, n, **{"X-Forwarded-For": "203.0.113.9"}) == 404
    assert miss(balancer, 99, **{"X-Forwarded-For": "203.0.113.9"}) == 429
    for spoof in ("198.51.100.1, 203.0.113.9", "8.8.8.8,203.0.113.9", "garbage, 203.0.113.9"):
        assert miss(balancer, 100, **{"X-Forwarded-For": spoof}) == 429
    # Another customer behind the same balancer is not caught by the first one's limit.
    assert miss(balancer, 101, **{"X-Forwarded-For": "203.0.113.10"}) == 404


def test_without_proxies_a_forwarded_header_cannot_dodge_the_limit(settings: Any) -> None:
    settings.PORCHLIGHT_TRUSTED_PROXIES = 0
    client = Client(REMOTE_ADDR="198.51.100.7")
    for n in range(LIMIT):
        assert miss(client, n, **{"X-Forwarded-For": f"10.1.{n}.1"}) == 404
    throttled = client.get(f"/t/{'h' * 32}/", headers={"X-Forwarded-For": "10.200.0.1"})
    assert throttled.status_code == 429 and throttled["Retry-After"] == "600"


def test_a_customer_refreshing_a_real_link_is_never_slowed_or_counted(client: Client) -> None:
    delivery = make_delivery()
    for _ in range(200):
        assert client.get(page_url(delivery)).status_code == 200
        assert client.get(page_url(delivery, "state/")).status_code == 200
    # None of those counted: the client still has its whole allowance of misses.
    for n in range(LIMIT):
        assert miss(client, n) == 404
    assert miss(client, LIMIT) == 429
    # And once throttled for guessing, their own link still opens.
    assert client.get(page_url(delivery)).status_code == 200


def test_invalid_expired_and_revoked_links_get_identical_answers_on_every_url(client: Client) -> None:
    revoked = make_delivery(token_revoked_at=timezone.now())
    expired = make_delivery(status="delivered", status_at=timezone.now() - timezone.timedelta(days=8))
    tokens = ["A" * 32, "short", "x" * 65, "%F0%9F%98%80" * 4, revoked.tracking_token, expired.tracking_token]
    for suffix, method in (("", "get"), ("state/", "get"), ("instructions/", "post"), ("feedback/", "post")):
        answers = set()
        for token in tokens:
            response = getattr(client, method)(f"/t/{token}/{suffix}", {"rating": "5", "instructions": "x"})
            answers.add((response.status_code, len(response.content)))
        assert len(answers) == 1 and answers.pop()[0] == 404, suffix


# --- across processes (T2): two daphnes behind one "load balancer", one Redis cache ----------


@contextmanager
def procfile_web(**extra_env: str) -> Iterator[str]:
    """The Procfile's web command (its daphne flags: no access log with tokens) on a free port."""
    from tests.services import process, service_env

    line = next(x for x in (ROOT / "Procfile").read_text().splitlines() if x.startswith("web:"))
    port = free_port()
    args = shlex.split(
        line.removeprefix("web:").replace("${PORT:-8000}", str(port)).replace("0.0.0.0", "127.0.0.1")  # noqa: S104
    )
    assert args[0] == "daphne"
    env = service_env(PORCHLIGHT_PUBLIC_URL=f"http://127.0.0.1:{port}", **extra_env)
    with process(
        [sys.executable, "-m", *args], env=env, ready=lambda: port_open(port), name=f"daphne-{port}"
    ):
        yield f"http://127.0.0.1:{port}"


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_web_processes_share_one_count_per_client_and_log_no_token() -> None:
    delivery = make_delivery()
    env = {"PORCHLIGHT_TRUSTED_PROXIES": "1"}
    with procfile_web(**env) as first, procfile_web(**env) as second, httpx.Client(timeout=10) as http:
        client = {"X-Forwarded-For": "203.0.113.9"}
        answers = [
            http.get(f"{(first, second)[n % 2]}/t/{'k' * 22}{n:010d}/", headers=client).status_code
            for n in range(LIMIT)
        ]
        assert answers == [404] * LIMIT  # 15 misses on each process, 30 in all
        for base in (first, second):
            assert http.get(f"{base}/t/{'k' * 32}/", headers=client).status_code == 429
            spoofed = {"X-Forwarded-For": "198.51.100.99, 203.0.113.9"}
            assert http.get(f"{base}/t/{'k' * 32}/", headers=spoofed).status_code == 429
            other = {"X-Forwarded-For": "203.0.113.10"}
            assert http.get(f"{base}/t/{'k' * 32}/", headers=other).status_code == 404
            page = http.get(f"{base}{page_url(delivery)}", headers=client)
            assert page.status_code == 200 and page.headers["X-Request-ID"]
    logs = "".join(
        (ROOT / "var" / f"daphne-{base.rsplit(':', 1)[1]}.log").read_text() for base in (first, second)
    )
    assert delivery.tracking_token not in logs and "k" * 22 not in logs
    assert '"event": "request_finished"' in logs and '"ip": "203.0.113.9"' in logs
