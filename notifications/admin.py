from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from notifications.models import Consent, InboundMessage, Notification, ProviderEvent, Status


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "kind",
        "channel",
        "recipient",
        "status",
        "attempts",
        "error_code",
        "next_attempt_at",
    )
    # "dead" is the list staff watch: messages that kept failing until we gave up.
    list_filter = ("status", "channel", "kind", "language")
    search_fields = ("recipient", "dedupe_key", "provider_id", "delivery__reference")
    raw_id_fields = ("delivery", "fallback_of")
    readonly_fields = ("created_at", "sent_at", "status_at")
    actions = ["send_again"]

    # Only for staff who may change messages: the Support group views them, and resends a
    # customer's link through its own audited action instead.
    @admin.action(description="Send again (dead or failed messages)", permissions=["change"])
    def send_again(self, request: HttpRequest, queryset: QuerySet[Notification]) -> None:
        from notifications.tasks import notification_send

        ids = list(queryset.filter(status__in=[Status.DEAD, Status.FAILED]).values_list("pk", flat=True))
        Notification.objects.filter(pk__in=ids).update(
            status=Status.QUEUED, attempts=0, next_attempt_at=timezone.now(), lease_until=None
        )
        for notification_id in ids:
            notification_send.delay_on_commit(notification_id)
        self.message_user(request, f"{len(ids)} message(s) queued again.")


@admin.register(Consent)
class ConsentAdmin(admin.ModelAdmin):
    list_display = ("address", "channel", "opted_out", "reason", "changed_at")
    list_filter = ("channel", "opted_out")
    search_fields = ("address",)


@admin.register(InboundMessage)
class InboundMessageAdmin(admin.ModelAdmin):
    list_display = ("received_at", "sender", "action", "needs_review", "body")
    list_filter = ("needs_review", "action")
    search_fields = ("sender", "body")


@admin.register(ProviderEvent)
class ProviderEventAdmin(admin.ModelAdmin):
    list_display = ("received_at", "provider", "status", "error_code", "notification")
    list_filter = ("provider", "status")
    raw_id_fields = ("notification",)
