"""The doors for dispatch products: `/api/v1/integrations/onfleet/` and `.../spoke/`.

Checks in the native intake's order (413, 415, 401, 400), then every authentic payload is
answered 200, even one Porchlight ignores: Onfleet retries anything else for a day and turns
the webhook off after 300 failures.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from tracking.integrations import onfleet, spoke
from tracking.integrations.mapping import Malformed
from tracking.integrations.services import provider_payload_receive
from tracking.views_api import MAX_BODY

# Onfleet's registration check is echoed back; nothing it needs is longer than this.
MAX_CHECK = 1024
# A hex HMAC-SHA512 is 128 characters; past a few of those a header is not a signature.
MAX_SIGNATURE = 512

Verifier = Callable[..., bool]


def _error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail}, status=status)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _receive(
    request: HttpRequest, *, provider: str, header: str, verify: Verifier, secrets: Iterable[str]
) -> JsonResponse:
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY:
        return _error(413, "payload_too_large", "The body must be at most 1 MiB.")
    content_type = (request.content_type or "").lower()
    charset = (request.content_params or {}).get("charset", "utf-8").lower()
    if content_type != "application/json" or charset not in ("utf-8", "utf8"):
        return _error(415, "unsupported_media_type", "Send Content-Type: application/json (UTF-8).")
    body = request.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        return _error(413, "payload_too_large", "The body must be at most 1 MiB.")
    signature = request.headers.get(header) or ""
    if not signature:
        return _error(401, "missing_signature", f"The {header} header is required.")
    if len(signature) > MAX_SIGNATURE or not verify(header=signature, body=body, secrets=secrets):
        return _error(401, "invalid_signature", f"The {header} header does not match this body.")
    try:
        text = body.decode("utf-8")
        document = json.loads(text, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _error(400, "invalid_json", "The body is not valid UTF-8 JSON.")
    try:
        payload, created = provider_payload_receive(provider=provider, body=text, document=document)
    except Malformed as problem:
        return _error(400, "invalid_payload", str(problem))
    return JsonResponse(
        {
            "received": "new" if created else "again",
            "outcome": payload.outcome,
            "results": payload.results,
        }
    )


@csrf_exempt
@require_http_methods(["GET", "POST"])
def onfleet_webhook(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        # Onfleet's registration handshake: 200 with the `check` value as the whole body (a 204
        # is refused). Unsigned, so it is plain text that a browser will not sniff as HTML.
        check = request.GET.get("check")
        if not check or len(check) > MAX_CHECK:
            return HttpResponse("Send ?check=<value>.", status=400, content_type="text/plain; charset=utf-8")
        response = HttpResponse(check, content_type="text/plain; charset=utf-8")
        response["X-Content-Type-Options"] = "nosniff"
        response["Cache-Control"] = "no-store"
        return response
    return _receive(
        request,
        provider=onfleet.PROVIDER,
        header=onfleet.SIGNATURE_HEADER,
        verify=onfleet.signature_matches,
        secrets=settings.ONFLEET_WEBHOOK_SECRETS,
    )


@csrf_exempt
@require_POST
def spoke_webhook(request: HttpRequest) -> HttpResponse:
    return _receive(
        request,
        provider=spoke.PROVIDER,
        header=spoke.SIGNATURE_HEADER,
        verify=spoke.signature_matches,
        secrets=settings.SPOKE_WEBHOOK_SECRETS,
    )
