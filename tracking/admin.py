"""Admin for tracking: a lean view for staff. The full support desk is a later issue.

What the routing backend owns is read-only here: it is the source of truth and would
overwrite any edit with its next event. Changes that must reach the routing backend go
through services that write the outbox, never through a model form.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from tracking.models import Delivery, Driver, InboundEvent, OutboundEvent, OutboundStatus
from tracking.outbound import outbound_retry


class _ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written only by the intake or the outbox: staff look; they change nothing here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(_ReadOnlyAdmin):
    list_display = ("reference", "customer_name", "status", "eta", "zone_code", "updated_at")
    list_filter = ("status", "zone_code")
    search_fields = ("reference", "customer_name", "email", "phone", "tracking_token")
    search_help_text = _("Reference, name, email, phone or tracking token")
    ordering = ("-updated_at",)
    show_full_result_count = False
    # Everything is read-only: the routing backend owns the details, status and ETA, and
    # the customer's instructions and safe place must reach it through the outbox, which a
    # staff edit here would skip (the support-desk issue adds that as a service).


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
