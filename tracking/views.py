"""The customer's tracking page (`/t/<token>/`), its live-state snapshot and its actions.

Every response here carries the same privacy and security headers (no-referrer, no-store: see
config.middleware); every unknown, malformed, revoked or expired token gets the same 404 page,
and a client that keeps missing is throttled. Each process keeps the pages it rendered, by
version, so an unchanged page costs one small query.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from typing import Any, TypeVar
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.middleware.csrf import get_token
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST, require_safe

from config.middleware import client_ip, token_url_headers
from tracking import live
from tracking.customer import (
    MAX_COMMENT,
    MAX_INSTRUCTIONS,
    MAX_SAFE_PLACE,
    CustomerError,
    address_hint,
    can_change_instructions,
    can_leave_feedback,
    delivery_for_token,
    delivery_language,
    delivery_leave_feedback,
    delivery_proof,
    delivery_timeline,
    delivery_update_instructions,
    delivery_zone,
    language_for,
    mask_codes,
    page_version,
    page_version_of,
)
from tracking.models import Delivery, DeliveryProof, Status

logger = logging.getLogger(__name__)

# T2: a client (by IP, see config.middleware.client_ip) that misses more than
# PORCHLIGHT_TOKEN_MISS_LIMIT tokens within the window is refused (429) for the rest of it.
# Counted in the shared cache (Redis in production), so several processes share one count.
MISS_LIMIT = settings.PORCHLIGHT_TOKEN_MISS_LIMIT
MISS_WINDOW = settings.PORCHLIGHT_TOKEN_MISS_WINDOW
DESTINATION_DECIMALS = 3  # about 100 m: the map shows the neighbourhood, not the door


Response = TypeVar("Response", bound=HttpResponseBase)


def customer_headers(response: Response) -> Response:
    """The headers of every page a customer reaches through their link (this one, slots...):
    `Referrer-Policy: no-referrer` (the token is in the URL), `Cache-Control: private,
    no-store`, nosniff, noindex, no framing. The Content-Security-Policy comes from django-csp
    (settings.CONTENT_SECURITY_POLICY). config.middleware.TokenUrlHeadersMiddleware also sets
    them on every response under /t/, whichever view or error page answered."""
    token_url_headers(response)
    return response


def _secured(response: HttpResponse) -> HttpResponse:
    customer_headers(response)
    return response


def _client_key(request: HttpRequest) -> str:
    return "tracking-miss:" + hashlib.sha256(client_ip(request).encode()).hexdigest()[:32]


def _count_miss(request: HttpRequest) -> int:
    """Count one unknown token for this client; returns its misses in the window."""
    key = _client_key(request)
    try:
        cache.add(key, 0, MISS_WINDOW)
        return int(cache.incr(key))
    except Exception:  # a cache outage must not take the page down
        logger.warning("could not count a tracking miss", exc_info=True)
        return 0


def _refused(request: HttpRequest, *, throttled: bool = False) -> HttpResponse:
    if throttled:
        response = render(request, "tracking/not_found.html", {"throttled": True}, status=429)
        response["Retry-After"] = str(MISS_WINDOW)
    else:
        response = render(request, "tracking/not_found.html", {"throttled": False}, status=404)
    return _secured(response)


def _get_delivery(request: HttpRequest, token: str) -> tuple[Delivery | None, HttpResponse | None]:
    # The lookup comes first, so a page view costs no cache round trip; only misses are
    # counted. A throttled client gets 429 for every miss; with 128-bit tokens a hit is never
    # what the throttle prevents, the load and the noise of a scan are.
    delivery = delivery_for_token(token=token)
    if delivery is None:
        return None, _refused(request, throttled=_count_miss(request) > MISS_LIMIT)
    return delivery, None


def _language(request: HttpRequest, delivery: Delivery) -> str:
    return delivery_language(delivery, request.GET.get("lang") or request.POST.get("lang"))


def _page_url(delivery: Delivery, language: str, name: str = "tracking_page") -> str:
    return reverse(name, args=[delivery.tracking_token]) + "?" + urlencode({"lang": language})


class _RenderedPages:
    """Rendered pages by version, per process: a state change makes a new key, so nothing is
    ever invalidated by hand, and the least recently used page falls out past `size`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pages: OrderedDict[str, str] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self.lock:
            page = self.pages.get(key)
            if page is not None:
                self.pages.move_to_end(key)
            return page

    def put(self, key: str, page: str) -> None:
        with self.lock:
            self.pages[key] = page
            self.pages.move_to_end(key)
            while len(self.pages) > self.size:
                self.pages.popitem(last=False)


# Rendered once with this in place of the CSRF token; each response gets its visitor's own.
CSRF_PLACEHOLDER = "porchlight-csrf-placeholder"
_rendered = _RenderedPages(size=2048)


class InstructionsForm(forms.Form):
    instructions = forms.CharField(
        label=_("Delivery instructions"), max_length=MAX_INSTRUCTIONS, required=False, widget=forms.Textarea
    )
    safe_place = forms.CharField(label=_("Safe place"), max_length=MAX_SAFE_PLACE, required=False)


class FeedbackForm(forms.Form):
    rating = forms.TypedChoiceField(
        label=_("Your rating"),
        choices=[(n, str(n)) for n in range(5, 0, -1)],
        coerce=int,
        widget=forms.RadioSelect,
    )
    comment = forms.CharField(
        label=_("Comment (optional)"), max_length=MAX_COMMENT, required=False, widget=forms.Textarea
    )


def _context(request: HttpRequest, delivery: Delivery, language: str, **extra: Any) -> dict[str, Any]:
    driver = delivery.driver
    shows_position = live.shows_position(delivery) and driver is not None and driver.lat is not None
    narrowed = delivery.eta_window_start is not None and delivery.eta_window_end is not None
    token = delivery.tracking_token
    # Booking is possible before the driver sets off, and again after a failed attempt.
    slots_open = bool(delivery.zone_code) and not delivery.is_on_the_way and not delivery.is_finished
    page_path = reverse("tracking_page", args=[token])
    other = "es" if language == "en" else "en"
    return {
        "delivery": delivery,
        "language": language,
        "other_language": other,
        "other_language_name": dict(settings.LANGUAGES)[other],
        "status_label": Status(delivery.status).label,
        "finished": delivery.is_finished,
        "on_the_way": delivery.is_on_the_way,
        "eta_start": delivery.eta_window_start if narrowed else None,
        "eta_end": delivery.eta_window_end if narrowed else None,
        "driver": driver if delivery.is_on_the_way else None,
        "shows_position": shows_position,
        "driver_lat": round(driver.lat, live.POSITION_DECIMALS)
        if shows_position and driver and driver.lat is not None
        else None,
        "driver_lon": round(driver.lon, live.POSITION_DECIMALS)
        if shows_position and driver and driver.lon is not None
        else None,
        "proof": delivery_proof(delivery) if delivery.status == Status.DELIVERED else None,
        "timeline": delivery_timeline(delivery=delivery),
        "address": address_hint(delivery),
        "instructions_shown": mask_codes(delivery.instructions),
        "safe_place_shown": mask_codes(delivery.safe_place),
        "can_change_instructions": can_change_instructions(delivery),
        "can_leave_feedback": can_leave_feedback(delivery),
        "slots_url": page_path + "slots/" if slots_open else "",
        "reschedule_first": delivery.status == Status.ATTEMPT_FAILED,
        "notifications_url": page_path + "notifications/",
        "page_url": _page_url(delivery, language),
        "switch_url": _page_url(delivery, other),
        "state_url": _page_url(delivery, language, "tracking_state"),
        "ws_path": f"/ws/t/{token}/?" + urlencode({"lang": language}),
        "map_tiles": settings.MAP_TILE_URL,
        "dest_lat": round(delivery.lat, DESTINATION_DECIMALS),
        "dest_lon": round(delivery.lon, DESTINATION_DECIMALS),
        "instructions_form": extra.pop("instructions_form", None) or InstructionsForm(),
        "feedback_form": extra.pop("feedback_form", None) or FeedbackForm(),
        **extra,
    }


def _render(
    request: HttpRequest, delivery: Delivery, template: str, *, status: int, **extra: Any
) -> HttpResponse:
    """A page or region for one visitor (after a POST): rendered, never cached."""
    language = _language(request, delivery)
    with translation.override(language), timezone.override(delivery_zone(delivery)):
        response = render(request, template, _context(request, delivery, language, **extra), status=status)
    response["Content-Language"] = language
    response["Vary"] = "Cookie, HX-Request"
    return _secured(response)


def _cached_get(request: HttpRequest, token: str, template: str) -> HttpResponse:
    """GET of the page or its snapshot: 304 when the client holds this version, else the
    rendered page of this version if this process has it, else render it. One small query
    when nothing changed.

    The page is `no-store` (it holds a personal address and a live position), so browsers keep
    nothing to revalidate; a client that does keep it (an app's web view, a monitoring probe)
    and asks with If-None-Match gets 304 (issue 3)."""
    version = page_version(token=token)
    if version is None:
        return _refused(request, throttled=_count_miss(request) > MISS_LIMIT)
    language = language_for(version.locale, request.GET.get("lang"))
    key = f"{template}|{language}|{version.key}"
    etag = _etag(request, key)
    if etag in request.headers.get("If-None-Match", ""):
        response = HttpResponse(status=304)
        response["ETag"] = etag
        return _secured(response)
    body = _rendered.get(key)
    if body is None:
        delivery = delivery_for_token(token=token)
        if delivery is None:  # revoked between the two reads
            return _refused(request)
        with translation.override(language), timezone.override(delivery_zone(delivery)):
            context = _context(request, delivery, language)
            context["csrf_token"] = CSRF_PLACEHOLDER
            body = render_to_string(template, context, request=request)
        # Keyed by what was rendered: a change between the two reads is never filed under
        # the older version.
        _rendered.put(f"{template}|{language}|{page_version_of(delivery)}", body)
    response = HttpResponse(body.replace(CSRF_PLACEHOLDER, get_token(request)))
    response["Content-Language"] = language
    response["Vary"] = "Cookie, HX-Request"
    response["ETag"] = etag
    return _secured(response)


def _etag(request: HttpRequest, key: str) -> str:
    # The forms carry a CSRF token made from the cookie's secret: a new cookie is a new page.
    cookie = request.COOKIES.get(settings.CSRF_COOKIE_NAME, "")
    return '"' + hashlib.sha256(f"{key}|{cookie}".encode()).hexdigest()[:32] + '"'


@require_safe
def tracking_page(request: HttpRequest, token: str) -> HttpResponse:
    return _cached_get(request, token, "tracking/page.html")


@require_safe
def tracking_state(request: HttpRequest, token: str) -> HttpResponse:
    """The live-state region alone: the snapshot a page re-reads after a gap or reconnect."""
    return _cached_get(request, token, "tracking/page.html#live-state")


@require_POST
def tracking_instructions(request: HttpRequest, token: str) -> HttpResponse:
    delivery, refusal = _get_delivery(request, token)
    if delivery is None:
        return refusal  # type: ignore[return-value]
    form = InstructionsForm(request.POST)
    saved = False
    if form.is_valid() and can_change_instructions(delivery):
        try:
            delivery_update_instructions(
                delivery=delivery,
                instructions=form.cleaned_data["instructions"],
                safe_place=form.cleaned_data["safe_place"],
            )
            saved = True
        except CustomerError:
            pass
    if request.htmx:  # type: ignore[attr-defined]
        # 200 either way: htmx swaps only 2xx answers, and the region says what went wrong.
        return _render(
            request,
            delivery,
            "tracking/page.html#instructions",
            status=200,
            instructions_saved=saved,
            instructions_form=None if saved else form,
        )
    if saved:
        return _secured(
            HttpResponseRedirect(_page_url(delivery, _language(request, delivery)) + "#instructions")
        )
    return _render(request, delivery, "tracking/page.html", status=400, instructions_form=form)


@require_POST
def tracking_feedback(request: HttpRequest, token: str) -> HttpResponse:
    delivery, refusal = _get_delivery(request, token)
    if delivery is None:
        return refusal  # type: ignore[return-value]
    form = FeedbackForm(request.POST)
    saved = False
    if form.is_valid():
        try:
            delivery_leave_feedback(
                delivery=delivery, rating=form.cleaned_data["rating"], comment=form.cleaned_data["comment"]
            )
            saved = True
        except CustomerError:
            pass
    status = 200 if saved else (409 if form.is_valid() else 400)
    if request.htmx:  # type: ignore[attr-defined]
        return _render(request, delivery, "tracking/page.html#feedback", status=200, feedback_form=form)
    if saved:
        return _secured(HttpResponseRedirect(_page_url(delivery, _language(request, delivery)) + "#feedback"))
    return _render(request, delivery, "tracking/page.html", status=status, feedback_form=form)


@require_safe
def tracking_proof_photo(request: HttpRequest, token: str) -> HttpResponse:
    """The proof photo, only through the delivery's own token."""
    delivery, refusal = _get_delivery(request, token)
    if delivery is None:
        return refusal  # type: ignore[return-value]
    photo = DeliveryProof.objects.filter(delivery=delivery).values_list("photo", "photo_content_type").first()
    if (
        delivery.status != Status.DELIVERED
        or not photo
        or not photo[0]
        or photo[1] not in ("image/jpeg", "image/png")
    ):
        return _refused(request)
    # no-store like the page: a photo of someone's door, behind their link.
    return _secured(HttpResponse(bytes(photo[0]), content_type=photo[1]))
