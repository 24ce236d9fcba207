"""The customer's slot page: `GET/POST /t/<token>/slots/` (contract v1, section 3).

Every form works as a plain POST (303 to the page on success, the page again with the reason
and a 400/409 otherwise). Under htmx the same view answers with the page's `booking` partial,
swapped in place; the page's htmx-config lets 400/409 answers swap too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils import timezone, translation
from django.utils.cache import add_never_cache_headers
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_http_methods
from django_htmx.middleware import HtmxDetails

from scheduling.models import BookedBy, Booking, Slot, Zone
from scheduling.services import (
    BookingRefused,
    booking_book,
    booking_closed_reason,
    booking_cutoff,
    slots_for_delivery,
)
from tracking.models import Delivery
from tracking.views import customer_headers

TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


@dataclass
class SlotRow:
    slot: Slot
    start: datetime
    end: datetime
    disabled: bool
    current: bool
    note: str | Promise


@dataclass
class Day:
    date: date
    rows: list[SlotRow]


def _get_delivery_or_none(token: str) -> Delivery | None:
    if not TOKEN_RE.fullmatch(token):
        return None
    delivery = Delivery.objects.filter(tracking_token=token).first()
    if delivery is None or not delivery.token_is_usable(now=timezone.now()):
        return None
    return delivery


def _language_of(delivery: Delivery) -> str:
    try:
        return translation.get_supported_language_variant(delivery.locale or "en")
    except LookupError:
        return "en"


def _not_found(request: HttpRequest) -> HttpResponse:
    # One page for unknown, revoked and expired links alike.
    return _secured(render(request, "scheduling/not_found.html", status=404))


def _secured(response: HttpResponse) -> HttpResponse:
    add_never_cache_headers(response)
    return customer_headers(response)


@require_http_methods(["GET", "POST"])
def slots_page(request: HtmxHttpRequest, token: str) -> HttpResponse:
    delivery = _get_delivery_or_none(token)
    if delivery is None:
        return _not_found(request)
    zone = Zone.objects.filter(code=delivery.zone_code).first() if delivery.zone_code else None
    language = _language_of(delivery)
    with (
        translation.override(language),
        timezone.override(zone.tzinfo if zone else delivery.timezone or "UTC"),
    ):
        status = 200
        context: dict[str, Any] = {
            "delivery": delivery,
            "error": None,
            "confirmed": request.GET.get("booked") == "1",
        }
        if request.method == "POST":
            try:
                booking_book(delivery=delivery, slot_id=request.POST.get("slot"), by=BookedBy.CUSTOMER)
            except BookingRefused as refusal:
                status, context["error"] = refusal.http_status, refusal.message
            else:
                if not request.htmx:
                    return _see_other(f"{request.path}?booked=1")
                context["confirmed"] = True
            delivery.refresh_from_db()
        context.update(_page_context(delivery))
        template = "scheduling/slots.html#booking" if request.htmx else "scheduling/slots.html"
        response = render(request, template, context, status=status)
        response["Content-Language"] = language
    return _secured(response)


def _see_other(url: str) -> HttpResponse:
    response = HttpResponseRedirect(url)
    response.status_code = 303  # after a POST, the browser GETs the page
    return response


def _page_context(delivery: Delivery) -> dict[str, Any]:
    booking = Booking.objects.filter(delivery=delivery).select_related("slot__zone").first()
    current = booking.slot if booking else None
    closed = booking_closed_reason(delivery=delivery)
    now = timezone.now()
    cutoff = now + booking_cutoff()
    days: dict[date, Day] = {}
    for slot in slots_for_delivery(delivery=delivery):
        is_current = current is not None and slot.pk == current.pk
        note: str | Promise = ""
        if is_current:
            note = _("Your booking")
        elif slot.is_full:
            note = _("Full")
        elif slot.start < cutoff:
            note = _("Booking closed")
        elif slot.is_few_left:
            note = _("Few left")
        disabled = not is_current and (closed is not None or slot.is_full or slot.start < cutoff)
        start = timezone.localtime(slot.start, slot.zone.tzinfo)
        row = SlotRow(slot, start, timezone.localtime(slot.end, slot.zone.tzinfo), disabled, is_current, note)
        days.setdefault(start.date(), Day(start.date(), [])).rows.append(row)
    return {
        "booking": booking,
        "current": current,
        "closed": closed,
        "days": list(days.values()),
        "bookable": closed is None and any(not row.disabled for day in days.values() for row in day.rows),
        "tracking_path": f"/t/{delivery.tracking_token}/",
    }
