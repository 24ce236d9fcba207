"""The routing backend's door: `POST /api/v1/events` (contract v1, section 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.utils.http import parse_header_parameters
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from tracking import signing
from tracking.services import events_ingest_together

MAX_BODY = 1024 * 1024
MAX_EVENTS = 500
OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.json"


# A refusal of the whole request, as the contract words it: (HTTP status, {"error", "detail"}).
Refusal = tuple[int, dict[str, str]]


def _refusal(status: int, code: str, detail: str) -> Refusal:
    return status, {"error": code, "detail": detail}


TOO_LARGE = _refusal(413, "payload_too_large", "The body must be at most 1 MiB.")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def refuse_headers(*, content_length: str | None, content_type: str | None) -> Refusal | None:
    """413 for a declared length over the limit, then 415 for anything but UTF-8 JSON: what
    the headers alone decide, before the body is read."""
    try:
        declared = int(content_length or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY:
        return TOO_LARGE
    media_type, params = parse_header_parameters(content_type or "")
    if media_type.lower() != "application/json" or params.get("charset", "utf-8").lower() not in (
        "utf-8",
        "utf8",
    ):
        return _refusal(415, "unsupported_media_type", "Send Content-Type: application/json (UTF-8).")
    return None


def signed_events(*, body: bytes, signature: str | None) -> tuple[list[Any], None] | tuple[None, Refusal]:
    """The events of a body of at most MAX_BODY + 1 bytes, or the refusal: 413, 401, 400."""
    if len(body) > MAX_BODY:
        return None, TOO_LARGE
    try:
        signing.verify(
            header=signature,
            body=body,
            secrets=settings.PORCHLIGHT_ROUTING_SECRETS,
            tolerance=settings.PORCHLIGHT_SIGNATURE_TOLERANCE,
        )
    except signing.SignatureError as error:
        return None, _refusal(401, error.code, error.detail)
    try:
        document = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, _refusal(400, "invalid_json", "The body is not valid UTF-8 JSON.")
    events = events_of(document)
    if events is None:
        return None, _refusal(
            400,
            "invalid_envelope",
            f'Send one EVENT object, or {{"events": [...]}} with 1 to {MAX_EVENTS} events.',
        )
    return events, None


def events_of(document: Any) -> list[Any] | None:
    """The events of an EVENT or `{"events": [...]}` body, or None if it is neither."""
    if not isinstance(document, dict):
        return None
    if "events" in document:
        events = document["events"]
        if isinstance(events, list) and 1 <= len(events) <= MAX_EVENTS:
            return events
        return None
    if document.keys() & {"id", "type", "occurred_at", "data"}:
        return [document]
    return None


@csrf_exempt
@require_POST
def events_receive(request: HttpRequest) -> HttpResponse:
    """The intake through Django's request cycle: what runs under WSGI and in tests with
    Django's client. Under daphne, tracking/intake_asgi.py answers on the event loop, with
    the same functions."""
    refusal = refuse_headers(
        content_length=request.META.get("CONTENT_LENGTH"), content_type=request.META.get("CONTENT_TYPE")
    )
    if refusal is None:
        events, refusal = signed_events(
            body=request.read(MAX_BODY + 1), signature=request.headers.get(signing.HEADER)
        )
    if refusal is not None:
        status, document = refusal
        return JsonResponse(document, status=status)
    assert events is not None
    return JsonResponse({"results": events_ingest_together(raw_events=events)})


@require_GET
def openapi_document(request: HttpRequest) -> FileResponse:
    return FileResponse(OPENAPI_PATH.open("rb"), content_type="application/json")
