"""The routing backend's door: `POST /api/v1/events` (contract v1, section 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import FileResponse, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from tracking import signing
from tracking.services import events_ingest_together

MAX_BODY = 1024 * 1024
MAX_EVENTS = 500
OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.json"


def _error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail}, status=status)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_signed_json(request: HttpRequest, *, secrets: list[str]) -> tuple[Any, JsonResponse | None]:
    """The body as JSON, or the contract's error response: 413, 415, 401, 400 in that order."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY:
        return None, _error(413, "payload_too_large", "The body must be at most 1 MiB.")
    content_type = (request.content_type or "").lower()
    charset = (request.content_params or {}).get("charset", "utf-8").lower()
    if content_type != "application/json" or charset not in ("utf-8", "utf8"):
        return None, _error(415, "unsupported_media_type", "Send Content-Type: application/json (UTF-8).")
    body = request.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        return None, _error(413, "payload_too_large", "The body must be at most 1 MiB.")
    try:
        signing.verify(
            header=request.headers.get(signing.HEADER),
            body=body,
            secrets=secrets,
            tolerance=settings.PORCHLIGHT_SIGNATURE_TOLERANCE,
        )
    except signing.SignatureError as error:
        return None, _error(401, error.code, error.detail)
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constants), None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, _error(400, "invalid_json", "The body is not valid UTF-8 JSON.")


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
    document, error = read_signed_json(request, secrets=settings.PORCHLIGHT_ROUTING_SECRETS)
    if error is not None:
        return error
    events = events_of(document)
    if events is None:
        return _error(
            400,
            "invalid_envelope",
            f'Send one EVENT object, or {{"events": [...]}} with 1 to {MAX_EVENTS} events.',
        )
    return JsonResponse({"results": events_ingest_together(raw_events=events)})


@require_GET
def openapi_document(request: HttpRequest) -> FileResponse:
    return FileResponse(OPENAPI_PATH.open("rb"), content_type="application/json")
