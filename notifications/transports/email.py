from __future__ import annotations

import smtplib
from typing import TYPE_CHECKING

from anymail.exceptions import AnymailError, AnymailRecipientsRefused
from django.core.mail import EmailMultiAlternatives

from notifications.transports.base import Transport, TransportError

if TYPE_CHECKING:
    from notifications.models import Notification


class EmailTransport(Transport):
    def send(self, notification: Notification) -> str:
        message = EmailMultiAlternatives(
            subject=notification.subject, body=notification.body, to=[notification.recipient]
        )
        if notification.html:
            message.attach_alternative(notification.html, "text/html")
        # anymail passes metadata to the ESP and hands it back on tracking events, which finds
        # the row even when the event beats our "sent" update.
        message.metadata = {"notification_id": str(notification.pk)}  # type: ignore[attr-defined]
        try:
            message.send()
        except AnymailRecipientsRefused as error:
            raise TransportError(str(error)[:500], code="refused", retry=False) from error
        except (AnymailError, smtplib.SMTPException, OSError) as error:
            status = getattr(error, "status_code", None)
            permanent = isinstance(status, int) and 400 <= status < 500 and status != 429
            raise TransportError(str(error)[:500], code=str(status or ""), retry=not permanent) from error
        status = getattr(message, "anymail_status", None)
        return str(status.message_id) if status is not None and status.message_id is not None else ""
