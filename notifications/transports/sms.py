from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.urls import reverse

from notifications.backends import BaseSMSBackend, SMSError, SMSMessage, get_sms_backend
from notifications.transports.base import Transport, TransportError

if TYPE_CHECKING:
    from notifications.models import Notification


class SMSTransport(Transport):
    def __init__(self) -> None:
        self.backend: BaseSMSBackend | None = None  # made on first use, then kept for a chunk
        self.callback_base = f"{settings.PORCHLIGHT_PUBLIC_URL}{reverse('twilio_status')}"

    def send(self, notification: Notification) -> str:
        # The notification id rides in the callback URL, so that a callback that beats our own
        # "sent" update (Twilio is fast) still finds its row.
        callback = f"{self.callback_base}?n={notification.pk}"
        message = SMSMessage(to=notification.recipient, body=notification.body, status_callback=callback)
        try:
            self.backend = self.backend or get_sms_backend()
            sent = self.backend.send_messages([message])
        except SMSError as error:
            raise TransportError(str(error), code=error.code, retry=error.retry) from error
        if sent != 1:
            raise TransportError("the SMS backend did not send the message", retry=True)
        return message.provider_id
