"""`POST /api/v1/events` answered on daphne's event loop, beside Django's request cycle.

Django serves every request the same way: a request object with its META, a new thread for the
sync code, then sessions, CSRF, locale, CSP nonce, auth, messages and the rest of the
middleware. A bare view costs about 3 ms of CPU that way on our machines, and a single event
paid all of it on top of its own work, although the intake uses none of it: the routing backend
signs its requests, it has no session or cookie, and the answers are JSON in English.

Here the intake's request is read, checked and answered on the loop itself, with the functions
the Django view uses (tracking/views_api.py), and its events go to the group committer
(tracking/group_commit.py) without a thread of their own. What a request keeps of the middleware:

- an X-Request-ID and one `request_finished` log line, as config.middleware.RequestIdMiddleware;
- the security headers SecurityMiddleware and XFrameOptionsMiddleware set (HSTS when secure),
  and a CSP that allows nothing, as befits JSON;
- 503 with Retry-After when the database cannot be reached, as DatabaseUnavailableMiddleware;
- any other failure is logged as Django logs it (`django.request`) and answered 500 in JSON.

Anything else goes through Django, as before: other methods (405), a Host not in ALLOWED_HOSTS
(400), plain http when SECURE_SSL_REDIRECT wants https (301).

Measured (bench/profile_intake.py variants, one daphne, c=8): 111 -> 180 single events/s.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import structlog
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http.request import split_domain_port, validate_host

from config.middleware import (
    DATABASE_UNAVAILABLE,
    REQUEST_ID_HEADER,
    REQUEST_ID_SHAPE,
    access_log,
    client_ip_of,
    database_unavailable_logged,
)
from tracking import signing
from tracking.services import events_ingest_together_async
from tracking.views_api import MAX_BODY, TOO_LARGE, Refusal, refuse_headers, signed_events

PATH = "/api/v1/events"
# Larger bodies (batches) are checked and parsed in a worker thread, not on the loop: a 1 MiB
# body takes milliseconds to verify and parse, and every socket of the process would wait.
LOOP_BODY = 16 * 1024
JSON_CSP = "default-src 'none'; frame-ancestors 'none'"

request_logger = logging.getLogger("django.request")
Scope = dict[str, Any]


class IntakeApp:
    """ASGI: the intake's POSTs answered here, everything else passed to `django`."""

    def __init__(self, django: Any) -> None:
        self.django = django

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.django(scope, receive, send)
            return
        headers = _headers(scope)
        if not _host_allowed(headers) or (settings.SECURE_SSL_REDIRECT and not _is_secure(scope, headers)):
            await self.django(scope, receive, send)
            return
        upstream = headers.get("x-request-id", "")
        request_id = upstream if REQUEST_ID_SHAPE.fullmatch(upstream) else str(uuid.uuid4())
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request_id,
            ip=client_ip_of(
                remote=(scope.get("client") or ("",))[0], forwarded=headers.get("x-forwarded-for", "")
            ),
        )
        try:
            status, document, extra = await _answer(headers, receive)
            await _respond(send, scope, headers, status, document, [*extra, (REQUEST_ID_HEADER, request_id)])
            access_log.info("request_finished", code=status, request=f"POST {PATH}")
        except ClientGone:
            pass  # left before its body was in: nothing was applied, nobody to answer
        finally:
            structlog.contextvars.clear_contextvars()


async def _answer(headers: dict[str, str], receive: Any) -> tuple[int, Any, list[tuple[str, str]]]:
    refusal = refuse_headers(
        content_length=headers.get("content-length"), content_type=headers.get("content-type")
    )
    if refusal is not None:
        return (*refusal, [])
    body = await _read_body(receive)
    if body is None:
        return (*TOO_LARGE, [])
    try:
        return await _ingest(body, headers.get(signing.HEADER.lower()))
    except (OperationalError, InterfaceError) as error:
        database_unavailable_logged(error)
        return 503, DATABASE_UNAVAILABLE, [("Retry-After", "10")]
    except Exception:
        request_logger.error("Internal Server Error: %s", PATH, exc_info=True, extra={"status_code": 500})
        return 500, {"error": "server_error", "detail": "Something went wrong on our side; try again."}, []


async def _ingest(body: bytes, signature: str | None) -> tuple[int, Any, list[tuple[str, str]]]:
    checked: tuple[list[Any], None] | tuple[None, Refusal]
    if len(body) <= LOOP_BODY:
        checked = signed_events(body=body, signature=signature)
    else:
        checked = await sync_to_async(signed_events, thread_sensitive=False)(body=body, signature=signature)
    events, refusal = checked
    if refusal is not None:
        return (*refusal, [])
    assert events is not None
    return 200, {"results": await events_ingest_together_async(raw_events=events)}, []


class ClientGone(Exception):
    """The client disconnected before the whole body arrived."""


async def _read_body(receive: Any) -> bytes | None:
    """The whole body, or None once it grows past MAX_BODY (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _respond(
    send: Any, scope: Scope, headers: dict[str, str], status: int, document: Any, extra: list[tuple[str, str]]
) -> None:
    # json.dumps as JsonResponse calls it: the same bytes as the Django view's answer.
    body = json.dumps(document).encode()
    response = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        *_security_headers(scope, headers),
        *extra,
    ]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in response
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _security_headers(scope: Scope, headers: dict[str, str]) -> list[tuple[str, str]]:
    """What SecurityMiddleware and XFrameOptionsMiddleware would add to the answer."""
    found = [("X-Frame-Options", settings.X_FRAME_OPTIONS), ("Content-Security-Policy", JSON_CSP)]
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        found.append(("X-Content-Type-Options", "nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        found.append(("Referrer-Policy", str(settings.SECURE_REFERRER_POLICY)))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        found.append(("Cross-Origin-Opener-Policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY))
    if settings.SECURE_HSTS_SECONDS and _is_secure(scope, headers):
        sts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            sts += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            sts += "; preload"
        found.append(("Strict-Transport-Security", sts))
    return found


def _headers(scope: Scope) -> dict[str, str]:
    # A header sent twice is joined with a comma, as Django's ASGIRequest joins it into META.
    found: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        found[name] = f"{found[name]},{value}" if name in found else value
    return found


def _host_allowed(headers: dict[str, str]) -> bool:
    domain, _ = split_domain_port(headers.get("host", ""))
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return bool(domain) and validate_host(domain, allowed)


def _is_secure(scope: Scope, headers: dict[str, str]) -> bool:
    """As HttpRequest.is_secure(): the proxy's header when one is configured and sent."""
    if settings.SECURE_PROXY_SSL_HEADER:
        name, secure_value = settings.SECURE_PROXY_SSL_HEADER
        sent = headers.get(name.removeprefix("HTTP_").replace("_", "-").lower())
        if sent is not None:
            return sent.split(",", 1)[0].strip() == secure_value
    return scope.get("scheme") == "https"
