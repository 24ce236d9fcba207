"""Admin for stored provider payloads: staff read what Onfleet or Spoke sent and what came of
it, and replay payloads after a mapping fix (tracking.integrations.services)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from tracking.integrations.services import provider_payloads_replay
from tracking.models import Delivery, PayloadOutcome, ProviderPayload


@admin.register(ProviderPayload)
class ProviderPayloadAdmin(admin.ModelAdmin):
    list_display = ("received_at", "provider", "kind", "reference", "outcome", "times_received", "replays")
    list_filter = ("provider", "outcome", "kind")
    search_fields = ("reference", "key")
    search_help_text = _("Delivery reference or provider key")
    ordering = ("-received_at",)
    show_full_result_count = False
    actions = ("replay",)
    # Read-only: what the provider sent is evidence; a replay is the one way to act on it.
    readonly_fields = (
        "provider", "key", "kind", "reference", "delivery", "outcome", "error", "results", "received_at",
        "times_received", "replayed_at", "replays", "body",
    )  # fmt: skip

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_replay_permission(self, request: HttpRequest) -> bool:
        # A replay changes deliveries, so it takes the change permission, not just view.
        return request.user.has_perm("tracking.change_providerpayload")

    @admin.display(description=_("delivery"))
    def delivery(self, obj: ProviderPayload) -> str:
        delivery = Delivery.objects.filter(reference=obj.reference).only("pk", "reference").first()
        if delivery is None:
            return "-"
        url = reverse("admin:tracking_delivery_change", args=[delivery.pk])
        return format_html('<a href="{}">{}</a>', url, delivery.reference)

    @admin.action(description=_("Replay: map again and apply"), permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[ProviderPayload]) -> None:
        replayed = provider_payloads_replay(ids=list(queryset.values_list("pk", flat=True)))
        count = len(replayed)
        failed = sum(p.outcome in (PayloadOutcome.FAILED, PayloadOutcome.REJECTED) for p in replayed)
        self.message_user(
            request,
            ngettext("%d payload replayed", "%d payloads replayed", count) % count
            + (f"; {failed} still failed or rejected (see their results)" if failed else "."),
            messages.WARNING if failed or not count else messages.SUCCESS,
        )
