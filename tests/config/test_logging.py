"""Logs (issue #7 point 5): structured lines with a request id, returned as X-Request-ID; no raw
payload, token or secret in any log line."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from tests.conftest import signed_post
from tests.tracking.test_page import make_delivery, page_url, upsert_event
from tracking import signing

pytestmark = pytest.mark.django_db


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Every record the root logger handles, through the configured handler's formatter and
    filters (as production writes them), into a buffer."""
    configured = next(h for h in logging.getLogger().handlers if h.get_name() == "console")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(configured.formatter)
    for log_filter in configured.filters:
        handler.addFilter(log_filter)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def test_every_response_carries_a_request_id_that_its_log_lines_carry_too(
    client: Client, log_lines: io.StringIO
) -> None:
    response = client.get(page_url(make_delivery()))
    request_id = response["X-Request-ID"]
    assert uuid.UUID(request_id)
    finished = [line for line in parsed(log_lines) if line.get("event") == "request_finished"]
    assert finished and finished[-1]["request_id"] == request_id
    assert finished[-1]["code"] == 200 and finished[-1]["request"] == "GET /t/<token>/"
    assert {"timestamp", "level", "logger"} <= set(finished[-1])


def test_a_sane_upstream_request_id_is_kept_and_anything_else_replaced(client: Client) -> None:
    assert (
        client.get("/healthz", headers={"X-Request-ID": "lb-4f2a9c1e.7"})["X-Request-ID"] == "lb-4f2a9c1e.7"
    )
    for hostile in (
        "short",
        "a b c d e f g h",
        "x" * 129,
        "id\r\nX-Injected: 1",
        "<script>1234</script>",
        "ñññññññññ",
    ):
        answered = client.get("/healthz", headers={"X-Request-ID": hostile})["X-Request-ID"]
        assert answered != hostile and uuid.UUID(answered)


def test_library_log_lines_get_the_request_context_and_come_out_as_json(log_lines: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(request_id="req-12345678")
    try:
        logging.getLogger("tracking.views").warning("could not count a tracking miss for %s", "x")
    finally:
        structlog.contextvars.clear_contextvars()
    line = parsed(log_lines)[-1]
    assert line["event"] == "could not count a tracking miss for x"
    assert line["request_id"] == "req-12345678" and line["level"] == "warning"


SECRET_LIKE = "sk_live_51HgSECRETsentinel0000"
PAYLOAD_SENTINEL = "Payload-Sentinel-María"


def test_no_raw_payload_token_or_secret_reaches_the_logs(
    client: Client, log_lines: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    delivery = make_delivery()
    bad = upsert_event("ORD-LOG", api_key=SECRET_LIKE, note=PAYLOAD_SENTINEL)
    bad["data"]["address"]["lat"] = "not a number"  # rejected: the intake must not echo it to the logs
    assert signed_post(client, {"events": [bad]}).status_code == 200
    body = json.dumps({"events": [upsert_event("ORD-LOG2", note=PAYLOAD_SENTINEL)]}).encode()
    forged = signing.sign(secret="attacker-" + SECRET_LIKE, body=body)
    assert client.post("/api/v1/events", body, content_type="application/json",
                       headers={signing.HEADER: forged}).status_code == 401  # fmt: skip
    client.post("/api/v1/events", b"{" + PAYLOAD_SENTINEL.encode(), content_type="application/json")
    # A customer's link, a CSRF refusal on it (Django logs the path), a 404 with a query string.
    client.get(page_url(delivery) + f"?secret={SECRET_LIKE}")
    Client(enforce_csrf_checks=True).post(
        page_url(delivery, "instructions/"), {"instructions": PAYLOAD_SENTINEL}
    )
    # An admin login that fails: the password is never written.
    User.objects.create_superuser("staff", "s@example.com", "pw-" + SECRET_LIKE)
    client.post("/admin/login/", {"username": "staff", "password": "wrong-" + SECRET_LIKE})

    written = log_lines.getvalue()
    assert written, "nothing was logged: the test would prove nothing"
    assert "request_finished" in written and "Forbidden (CSRF" in written
    for text in (written, caplog.text):
        for secret in (
            SECRET_LIKE,
            PAYLOAD_SENTINEL,
            delivery.tracking_token,
            forged,
            *settings.PORCHLIGHT_ROUTING_SECRETS,
        ):
            assert secret not in text
    assert re.search(r"/t/<token>/", written)
