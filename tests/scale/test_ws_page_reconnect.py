"""S3, the page's half: a rolling daphne restart under a real Chromium page.

Two daphne processes share PostgreSQL and Redis. The page is open on the first; it is stopped,
and while it is down a status and a position go in through the second. The page's script must
notice, poll the snapshot meanwhile, reconnect (exponential backoff, full jitter) once the
first is back on its port, and show the latest state without a reload.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.processes import ROOT, free_port, port_open
from tests.scale.support import at, ping, post, seed_live, status
from tests.services import process, service_env
from tests.tracking.test_consumer import SESSION_PREFIX
from tests.tracking.test_e2e_page import block_tiles, wait_attribute

pytestmark = [
    pytest.mark.browser,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]


@contextmanager
def daphne_on(port: int) -> Iterator[str]:
    (ROOT / "var").mkdir(exist_ok=True)
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"]
    env = service_env(PORCHLIGHT_PUBLIC_URL=f"http://127.0.0.1:{port}", CHANNEL_LAYER_PREFIX=SESSION_PREFIX)
    with process(command, env=env, ready=lambda: port_open(port), name=f"daphne-{port}"):
        yield f"http://127.0.0.1:{port}"


def test_the_page_reconnects_after_its_daphne_restarts_and_shows_what_happened_meanwhile(page: Any) -> None:
    first_port = free_port()
    with daphne_on(free_port()) as other:
        with daphne_on(first_port) as first:
            (token,) = seed_live(first, "ORD-S3P", 1, driver="drv_s3p")
            post(first, ping("drv_s3p", at(-3), 27.51))
            block_tiles(page)
            page.goto(f"{first}/t/{token}/")
            page.wait_for_selector("#tracking[data-socket=open]", timeout=10_000)
            wait_attribute(page, "data-driver-lat", "27.5100")
        page.wait_for_selector("#tracking[data-socket=closed]", timeout=10_000)
        post(other, status("ORD-S3P-0", "arriving", -2), ping("drv_s3p", at(-2), 27.52))
        with daphne_on(first_port):
            page.wait_for_selector("#tracking[data-socket=open]", timeout=35_000)
            wait_attribute(page, "data-status", "arriving")
            wait_attribute(page, "data-driver-lat", "27.5200")
            # And the socket is live again: a new position arrives without any snapshot.
            post(other, ping("drv_s3p", at(-1), 27.53))
            wait_attribute(page, "data-driver-lat", "27.5300")
