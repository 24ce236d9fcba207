from __future__ import annotations

from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        # anymail's tracking signal is how ESP webhooks reach us: the one signal we listen to.
        from anymail.signals import tracking

        from notifications.views import anymail_tracking_received

        tracking.connect(anymail_tracking_received, dispatch_uid="notifications.anymail_tracking")
