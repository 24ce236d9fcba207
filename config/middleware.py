"""Request plumbing: the client's address, request ids, the headers and the CSRF rule of the
customer's token URLs, and a 503 instead of a 500 when the database is down."""

from __future__ import annotations

import ipaddress
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

import csp.middleware
import structlog
from csp.constants import HEADER
from csp.utils import build_policy
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.middleware import csrf

logger = logging.getLogger(__name__)

GetResponse = Callable[[HttpRequest], HttpResponse]


# --- the client's address ------------------------------------------------------------------
def _valid_ip(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def client_ip(request: HttpRequest) -> str:
    """The client's IP address, for the token throttle, django-axes and the logs.

    With PORCHLIGHT_TRUSTED_PROXIES = 0 it is REMOTE_ADDR and X-Forwarded-For is ignored. With
    N trusted proxies, each appends the address it saw to X-Forwarded-For, so the client is
    the N-th entry from the right; whatever stands further left came from the client and is
    never believed (a spoofed header cannot reset or dodge a limit). A request that arrived
    with fewer entries (not through every proxy) counts as REMOTE_ADDR.
    """
    return client_ip_of(
        remote=request.META.get("REMOTE_ADDR", "") or "",
        forwarded=request.META.get("HTTP_X_FORWARDED_FOR", ""),
    )


def client_ip_of(*, remote: str, forwarded: str) -> str:
    """client_ip() from REMOTE_ADDR and X-Forwarded-For themselves."""
    proxies = settings.PORCHLIGHT_TRUSTED_PROXIES
    if proxies > 0:
        hops = forwarded.split(",")[-64:]
        if len(hops) >= proxies and hops != [""]:
            found = _valid_ip(hops[-proxies])
            if found is not None:
                return found
    return _valid_ip(remote) or remote[:64]


def axes_username(request: HttpRequest, credentials: dict[str, Any] | None = None) -> str:
    """The username django-axes records for a login attempt: whatever was typed, cut to what
    a username can be (150) and without NUL, so that a hostile login form cannot make axes'
    own insert fail (PostgreSQL refuses a 10 kB value in its varchar(255), and NUL anywhere)."""
    source = credentials if credentials else request.POST
    raw = source.get("username", "") if source is not None else ""
    return str(raw or "").replace("\x00", "")[:150]


# --- request ids and structured request logs -----------------------------------------------
REQUEST_ID_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,127}")
REQUEST_ID_HEADER = "X-Request-ID"


access_log = structlog.get_logger("porchlight.request")


class RequestIdMiddleware:
    """Every request gets an id, bound to every log line written while it is served, returned as
    X-Request-ID, and one `request_finished` line (status, method and path without token or
    query string, client address).

    An id from the load balancer is kept only when it looks like one (8-128 letters, digits,
    `.`, `_`, `:` or `-`): anything else, a log-injection attempt or 10 kB of junk, is replaced.
    A lean stand-in for django-structlog's RequestMiddleware, which costs about 0.4 ms a request
    here (two log records, the request's headers rebuilt, signals) against about 0.1 ms for this.
    """

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        upstream = request.META.get("HTTP_X_REQUEST_ID", "")
        request_id = upstream if REQUEST_ID_SHAPE.fullmatch(upstream) else str(uuid.uuid4())
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, ip=client_ip(request))
        try:
            response = self.get_response(request)
            response[REQUEST_ID_HEADER] = request_id
            access_log.info(
                "request_finished",
                code=response.status_code,
                request=f"{request.method} {loggable_path(request)}",
            )
            return response
        finally:
            structlog.contextvars.clear_contextvars()


TOKEN_IN_PATH = re.compile(r"^/t/[^/]+/")


def loggable_path(request: HttpRequest) -> str:
    """The path as logged: a customer's token is as good as a password, and a query string may
    carry anything, so neither is written to the logs."""
    return TOKEN_IN_PATH.sub("/t/<token>/", request.path)[:300]


TOKEN_ANYWHERE = re.compile(r"/t/[^/\s\"']+/")


class RedactTokensFilter(logging.Filter):
    """For the log handlers: a customer's link in any log line (Django's "Forbidden (CSRF token
    missing.): /t/...", a websocket handshake, an error report) loses its token."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            message = record.getMessage()
            if "/t/" in message:
                record.msg, record.args = TOKEN_ANYWHERE.sub("/t/<token>/", message), None
        return True


# --- Content-Security-Policy ---------------------------------------------------------------
class CSPMiddleware(csp.middleware.CSPMiddleware):
    """django-csp, with the script nonce in every policy: django-csp adds it only once a template
    read request.csp_nonce, and none does (no inline script anywhere), but a policy that names
    a nonce keeps browsers from running any inline script even if 'unsafe-inline' crept in.

    The policy is built once per process with a placeholder for the nonce (django-csp builds it
    again for every response, a quarter of a millisecond); a view that changes it with
    django-csp's decorators still gets django-csp's own path."""

    _PLACEHOLDER = "porchlight-csp-nonce"
    _policy: str | None = None

    def process_request(self, request: HttpRequest) -> None:
        super().process_request(request)
        str(request.csp_nonce)  # type: ignore[attr-defined]

    @staticmethod
    def _unusual_settings() -> bool:
        """What the fast path does not do: a report-only policy, excluded URL prefixes."""
        policy = getattr(settings, "CONTENT_SECURITY_POLICY", None) or {}
        return bool(
            getattr(settings, "CONTENT_SECURITY_POLICY_REPORT_ONLY", None)
            or policy.get("EXCLUDE_URL_PREFIXES")
        )

    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        customised = any(
            getattr(response, name, None) is not None
            for name in ("_csp_config", "_csp_update", "_csp_replace", "_csp_exempt")
        )
        nonce = getattr(request, "_csp_nonce", None)
        if customised or nonce is None or HEADER in response or settings.DEBUG or self._unusual_settings():
            return super().process_response(request, response)  # type: ignore[no-any-return]
        if CSPMiddleware._policy is None:
            CSPMiddleware._policy = build_policy(nonce=self._PLACEHOLDER)
        response[HEADER] = CSPMiddleware._policy.replace(self._PLACEHOLDER, nonce)
        # As django-csp does: past this point a template can no longer add the nonce.
        request.csp_nonce = csp.middleware.CheckableLazyObject(self._csp_nonce_post_response)  # type: ignore[attr-defined]
        return response


# --- the customer's token URLs (/t/<token>/...) ----------------------------------------------
# The tracking page, its snapshot and actions, the slot page, the message settings, and the
# 404s of them all. The token in the URL is the customer's key: it must not leak in a Referer,
# stay in a cache, or be shown inside another site's frame.
TOKEN_URL_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
NO_STORE = "private, no-store"


def token_url_headers(response: HttpResponseBase) -> HttpResponseBase:
    for name, value in TOKEN_URL_HEADERS.items():
        response[name] = value
    if "no-store" not in response.get("Cache-Control", ""):
        response["Cache-Control"] = NO_STORE
    return response


class TokenUrlHeadersMiddleware:
    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if request.path_info.startswith("/t/"):
            token_url_headers(response)
        return response


class TokenUrlCsrfMiddleware:
    """One narrow exception to Django's CSRF check (which stays, right after this), for the
    customer's token URLs.

    Those pages send `Referrer-Policy: no-referrer`, and with it browsers send `Origin: null`
    (and no Referer) on a form POST (the Fetch standard's "serialize a request origin"), which
    Django refuses as a foreign origin. So for a POST to a URL under `t/<token>/` whose
    Origin is "null" or absent, the origin and Referer checks are skipped, but:

    - the CSRF cookie and the form's token must still match (a POST without them is 403),
      checked here by Django's own code;
    - a browser that says where the request came from (`Sec-Fetch-Site`, which a referrer
      policy does not hide) must say "same-origin";
    - any real Origin (another site's) goes on to Django's check and is refused.

    The origin check guards against a forged POST; here a forger would already need the
    customer's 192-bit token from the URL, with which they could act as the customer anyway.
    Every other URL (the admin, the webhooks) meets Django's check untouched.
    """

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        # Borrowed for its token check and its 403: Django's own code, not a copy.
        self.django: Any = csrf.CsrfViewMiddleware(get_response)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self,
        request: HttpRequest,
        callback: Callable[..., Any],
        callback_args: Any,
        callback_kwargs: Any,
    ) -> HttpResponse | None:
        if (
            request.method == "POST"
            and _is_token_url(request)
            and request.META.get("HTTP_ORIGIN", "null") == "null"
            and request.META.get("HTTP_SEC_FETCH_SITE", "same-origin") == "same-origin"
            and not getattr(callback, "csrf_exempt", False)
            and not getattr(request, "_dont_enforce_csrf_checks", False)
        ):
            try:
                self.django._check_token(request)
            except csrf.RejectRequest as refusal:
                return self.django._reject(request, refusal.reason)  # type: ignore[no-any-return]
            # Marks the request done (csrf_processing_done): Django's check lets it through.
            self.django._accept(request)
        return None


def _is_token_url(request: HttpRequest) -> bool:
    match = request.resolver_match
    return match is not None and match.route.startswith("t/<str:token>/")


# --- the database ----------------------------------------------------------------------------
class DatabaseUnavailableMiddleware:
    """When the database cannot be reached, answer 503 with Retry-After instead of a 500."""

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        database_unavailable_logged(exception)
        response = JsonResponse(DATABASE_UNAVAILABLE, status=503)
        response["Retry-After"] = "10"
        return response


DATABASE_UNAVAILABLE = {
    "error": "service_unavailable",
    "detail": "The database cannot be reached; try again shortly.",
}


def database_unavailable_logged(exception: Exception) -> None:
    logger.error("database unavailable: %s", type(exception).__name__)
