"""Admin for tracking, and the support desk (issue 6) on the delivery pages.

What the routing backend owns is read-only here: it is the source of truth and would
overwrite any edit with its next event. Changes that must reach the routing backend go
through services that write the outbox, never through a model form. The desk's search, page
and actions live in tracking.support, tracking.support_page and tracking.support_kpis; this
module only wires them to the admin.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, time
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from notifications.models import Notification
from tracking.models import Delivery, Driver, InboundEvent, OutboundEvent, OutboundStatus
from tracking.outbound import outbound_retry
from tracking.support import (
    SupportRefused,
    SupportStale,
    deliveries_search,
    support_contact_record,
    support_nonce,
    support_note_add,
    support_slot_book,
    tracking_link_resend,
    tracking_token_reissue,
)
from tracking.support_kpis import kpi_range, support_kpis
from tracking.support_page import (
    BAD_MESSAGE_STATUSES,
    deliveries_failed_since,
    deliveries_late,
    delivery_is_late,
    delivery_zone_codes,
    support_page,
)

ACT_PERMISSION = "tracking.add_supportaction"
KPI_PERMISSION = "tracking.view_support_kpis"


class _ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written only by the intake or the outbox: staff look; they change nothing here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- the delivery list's filters ----------------------------------------------------------


class _YesFilter(admin.SimpleListFilter):
    """A sidebar filter with one choice, "yes"."""

    label = _("yes")

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", str(self.label))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(self.condition(timezone.now())) if self.value() == "yes" else queryset

    def condition(self, now: datetime) -> Q:
        raise NotImplementedError


class LateFilter(_YesFilter):
    title = _("late")
    parameter_name = "late"
    label = _("ETA past the window")

    def condition(self, now: datetime) -> Q:
        return deliveries_late(now=now)


class FailedAttemptTodayFilter(_YesFilter):
    title = _("failed attempt today")
    parameter_name = "failed_today"

    def condition(self, now: datetime) -> Q:
        today = datetime.combine(timezone.localdate(now), time.min, tzinfo=timezone.get_current_timezone())
        return deliveries_failed_since(since=today)


class UndeliveredMessagesFilter(_YesFilter):
    title = _("undelivered messages")
    parameter_name = "bad_messages"

    def condition(self, now: datetime) -> Q:
        return Q(
            Exists(Notification.objects.filter(delivery=OuterRef("pk"), status__in=BAD_MESSAGE_STATUSES))
        )


class ZoneFilter(admin.SimpleListFilter):
    """The zones deliveries have, read along the index (SELECT DISTINCT would read them all)."""

    title = _("zone")
    parameter_name = "zone_code"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(code, code or "(no zone)") for code in delivery_zone_codes()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset if value is None else queryset.filter(zone_code=value)


class OutboundGaveUpFilter(_YesFilter):
    title = _("outbound events that gave up")
    parameter_name = "outbound_failed"

    def condition(self, now: datetime) -> Q:
        return Q(Exists(OutboundEvent.objects.filter(delivery=OuterRef("pk"), status=OutboundStatus.FAILED)))


# --- deliveries: the support desk ---------------------------------------------------------


@admin.register(Delivery)
class DeliveryAdmin(_ReadOnlyAdmin):
    list_display = (
        "reference", "customer_name", "status", "window_start", "eta", "is_late", "driver", "zone_code",
        "messages_ok", "updated_at",
    )  # fmt: skip
    list_filter = (
        "status",
        LateFilter,
        FailedAttemptTodayFilter,
        UndeliveredMessagesFilter,
        ZoneFilter,
        OutboundGaveUpFilter,
    )
    list_select_related = ("driver",)
    # The box: tracking.support.deliveries_search does the work (see get_search_results).
    search_fields = ("reference",)
    search_help_text = _(
        "Reference, phone (any format), e-mail, name (case and accents do not matter), tracking link or token"
    )
    date_hierarchy = "window_start"
    ordering = ("-updated_at",)
    show_full_result_count = False
    # Facet counts would run every filter's condition over the whole table on each load.
    show_facets = admin.ShowFacets.NEVER
    change_list_template = "admin/tracking/delivery/change_list.html"
    change_form_template = "admin/tracking/delivery/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Delivery]:
        bad = Notification.objects.filter(delivery=OuterRef("pk"), status__in=BAD_MESSAGE_STATUSES)
        return super().get_queryset(request).annotate(has_bad_messages=Exists(bad))

    @admin.display(description=_("late"), boolean=True)
    def is_late(self, obj: Delivery) -> bool:
        return delivery_is_late(obj, now=timezone.now())

    @admin.display(description=_("messages OK"), boolean=True)
    def messages_ok(self, obj: Delivery) -> bool:
        return not getattr(obj, "has_bad_messages", False)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Delivery], search_term: str
    ) -> tuple[QuerySet[Delivery], bool]:
        if not search_term:
            return queryset, False
        result = deliveries_search(queryset=queryset, text=search_term)
        request.support_search = result  # type: ignore[attr-defined]
        return result.queryset, False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        response = super().changelist_view(request, extra_context)
        if isinstance(response, TemplateResponse) and response.context_data is not None:
            response.context_data["support_search"] = getattr(request, "support_search", None)
            response.context_data["can_see_kpis"] = request.user.has_perm(KPI_PERMISSION)
        return response

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> Any:
        delivery = self._delivery(request, object_id)
        if delivery is not None and self.has_view_permission(request, delivery):
            extra_context = {
                **(extra_context or {}),
                "support": support_page(delivery=delivery),
                "nonce": support_nonce(),
                "can_act": request.user.has_perm(ACT_PERMISSION),
                "contact_channels": ("phone", "sms", "email", "chat", "other"),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def _delivery(self, request: HttpRequest, object_id: str) -> Delivery | None:
        if not str(object_id).isdigit() or len(str(object_id)) > 18:
            return None
        return (
            Delivery.objects.select_related("driver", "notification_preference")
            .filter(pk=int(object_id))
            .first()
        )

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("kpis/", view(self.kpi_view), name="tracking_delivery_kpis"),
            path("<str:object_id>/support/<str:action>/", view(self.support_action_view),
                 name="tracking_delivery_support"),
            *super().get_urls(),
        ]  # fmt: skip

    def support_action_view(self, request: HttpRequest, object_id: str, action: str) -> HttpResponse:
        """One POST per action of the delivery page; the result is a message on the page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not request.user.has_perm(ACT_PERMISSION):
            raise PermissionDenied
        delivery = self._delivery(request, object_id)
        handler = self._actions().get(action)
        if delivery is None or handler is None or not self.has_view_permission(request, delivery):
            raise Http404("No such delivery or action.")
        try:
            message = handler(request, delivery)
        except SupportStale as stale:
            messages.warning(request, stale.message)
        except SupportRefused as refusal:
            messages.error(request, refusal.message)
        else:
            messages.success(request, message)
        return redirect(reverse("admin:tracking_delivery_change", args=[delivery.pk]))

    def _actions(self) -> dict[str, Callable[[HttpRequest, Delivery], str]]:
        return {
            "note": _note,
            "contact": _contact,
            "resend": _resend,
            "reissue": _reissue,
            "slot": _slot,
        }

    def kpi_view(self, request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm(KPI_PERMISSION):
            raise PermissionDenied
        first, last, warning = kpi_range(
            request.GET.get("start"), request.GET.get("end"), today=timezone.localdate()
        )
        context = {
            **self.admin_site.each_context(request),
            "title": _("Support KPIs"),
            "opts": self.model._meta,
            "kpis": support_kpis(first=first, last=last),
            "first": first,
            "last": last,
            "warning": warning,
        }
        return TemplateResponse(request, "admin/tracking/delivery/kpis.html", context)


def _post(request: HttpRequest, name: str) -> str:
    return str(request.POST.get(name, ""))


def _note(request: HttpRequest, delivery: Delivery) -> str:
    _action, created = support_note_add(
        delivery_id=delivery.pk, user=request.user, text=_post(request, "text"), nonce=_post(request, "nonce")
    )
    return "Note added." if created else "This note was already added."


def _contact(request: HttpRequest, delivery: Delivery) -> str:
    _action, created = support_contact_record(
        delivery_id=delivery.pk, user=request.user, channel=_post(request, "channel"),
        text=_post(request, "text"), nonce=_post(request, "nonce"),
    )  # fmt: skip
    return '"Where is my order" contact recorded.' if created else "This contact was already recorded."


def _resend(request: HttpRequest, delivery: Delivery) -> str:
    action, created = tracking_link_resend(
        delivery_id=delivery.pk,
        user=request.user,
        channel=_post(request, "channel"),
        nonce=_post(request, "nonce"),
    )
    where = f"{action.detail.get('channel', '')} to {action.detail.get('recipient', '')}"
    return f"Tracking link queued by {where}." if created else f"The link was already sent ({where})."


def _reissue(request: HttpRequest, delivery: Delivery) -> str:
    _action, created = tracking_token_reissue(
        delivery_id=delivery.pk, user=request.user, expected_token=_post(request, "token"),
        nonce=_post(request, "nonce"),
    )  # fmt: skip
    if not created:
        return "The link was already reissued."
    return "The old tracking link no longer works; a new one was issued. Send it to the customer if needed."


def _slot(request: HttpRequest, delivery: Delivery) -> str:
    result = support_slot_book(
        delivery_id=delivery.pk, user=request.user, slot_id=_post(request, "slot"),
        expected_slot_id=_post(request, "current_slot"),
    )  # fmt: skip
    if not result.changed:
        return f"{delivery.reference} was already booked for {result.slot}."
    verb = "moved to" if result.previous else "booked for"
    return f"{delivery.reference} {verb} {result.slot}; the customer gets a confirmation."


@admin.register(Driver)
class DriverAdmin(_ReadOnlyAdmin):
    list_display = ("external_id", "name", "vehicle", "position_recorded_at", "updated_at")
    search_fields = ("external_id", "name")
    ordering = ("name",)


@admin.register(InboundEvent)
class InboundEventAdmin(_ReadOnlyAdmin):
    list_display = ("received_at", "event_id", "type", "reference", "result", "occurred_at")
    list_filter = ("result", "type")
    search_fields = ("event_id", "reference")
    ordering = ("-received_at",)
    show_full_result_count = False


class NeedsStaffFilter(admin.SimpleListFilter):
    """The outbox rows that gave up, with their number, first in the sidebar."""

    title = _("needs staff")
    parameter_name = "needs_staff"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        failed = OutboundEvent.objects.filter(status=OutboundStatus.FAILED).count()
        return [("yes", f"{OutboundStatus.FAILED.label} ({failed})")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(status=OutboundStatus.FAILED)
        return queryset


@admin.register(OutboundEvent)
class OutboundEventAdmin(_ReadOnlyAdmin):
    list_display = (
        "created_at", "event_id", "type", "delivery", "status", "attempts", "next_attempt_at", "short_error",
    )  # fmt: skip
    list_filter = (NeedsStaffFilter, "status", "type")
    list_select_related = ("delivery",)
    search_fields = ("event_id", "delivery__reference")
    ordering = ("-created_at",)
    show_full_result_count = False
    actions = ("retry_now",)

    def has_retry_permission(self, request: HttpRequest) -> bool:
        # Sending again changes the row, so it takes the change permission, not just view.
        return request.user.has_perm("tracking.change_outboundevent")

    @admin.display(description=_("last error"))
    def short_error(self, obj: OutboundEvent) -> str:
        return obj.last_error[:80]

    @admin.action(description=_("Retry now"), permissions=["retry"])
    def retry_now(self, request: HttpRequest, queryset: QuerySet[OutboundEvent]) -> None:
        count = outbound_retry(ids=queryset.values_list("pk", flat=True))
        self.message_user(
            request,
            ngettext("%d event queued to be sent now.", "%d events queued to be sent now.", count) % count,
            messages.SUCCESS if count else messages.WARNING,
        )


# Stored provider payloads (Onfleet, Spoke) have their admin beside the adapters.
from tracking.integrations import admin as _integrations_admin  # noqa: E402, F401
