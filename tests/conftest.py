"""Shared fixtures. Real services (PostgreSQL, Redis, Celery, daphne, Chromium) are used where
the environment provides them; see tests/services.py for how each is found or started."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from tracking import signing

CONTRACTS = Path(__file__).resolve().parent.parent.parent / "shared" / "contracts"


def signed_post(
    client: Client,
    body: bytes | str | Any,
    *,
    secret: str | None = None,
    timestamp: int | None = None,
    content_type: str = "application/json",
    path: str = "/api/v1/events",
) -> Any:
    """POST `body` to the intake, signed as the routing backend signs it."""
    if not isinstance(body, bytes | str):
        body = json.dumps(body)
    raw = body.encode() if isinstance(body, str) else body
    secret = secret or settings.PORCHLIGHT_ROUTING_SECRETS[0]
    return client.post(
        path,
        data=raw,
        content_type=content_type,
        headers={signing.HEADER: signing.sign(secret=secret, body=raw, timestamp=timestamp)},
    )


@pytest.fixture
def post_events(client: Client) -> Any:
    def post(body: Any, **kwargs: Any) -> Any:
        return signed_post(client, body, **kwargs)

    return post


@pytest.fixture(scope="session")
def contract_examples() -> dict[str, Any]:
    return json.loads((CONTRACTS / "routing-events.examples.json").read_text())


@pytest.fixture(scope="module")
def browser() -> Any:
    """Headless Debian Chromium through Playwright's Python API (no downloaded browser).

    Module-scoped on purpose: while Playwright's sync API is up it keeps an event loop marked
    running on this thread, which breaks asyncio.run() and async_to_sync in later tests, so it
    is stopped when the module's browser tests are done.
    """
    import os

    from tests.services import CHROMIUM_ARGS, chromium_path

    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    # The ORM calls the tests make between browser steps are plain synchronous calls, but
    # Django sees Playwright's loop and would refuse them.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            instance = playwright.chromium.launch(
                executable_path=executable, headless=True, args=CHROMIUM_ARGS
            )
            yield instance
            instance.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser: Any) -> Any:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="session", autouse=True)
def _clean_redis() -> None:
    """Start each session with an empty test Redis database (queues, cache, channel layer)."""
    if settings.REDIS_URL:
        import redis

        redis.Redis.from_url(settings.REDIS_URL).flushdb()
