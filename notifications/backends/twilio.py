"""Sends through the Twilio REST API with the official client: the one module that imports it."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http import HttpClient
from twilio.rest import Client

from notifications.backends import BaseSMSBackend, SMSError, SMSMessage

TIMEOUT = 10.0
# Twilio errors that no retry will fix: opted out (21610), not a valid or reachable number,
# not allowed to send there. Anything else 4xx is treated the same, except rate limits.
PERMANENT_CODES = frozenset(
    {21211, 21214, 21217, 21219, 21407, 21408, 21610, 21612, 21614, 30003, 30005, 30006}
)


class SMSBackend(BaseSMSBackend):
    # Tests put a recording HttpClient here; the real client and its request building stay.
    http_client: HttpClient | None = None

    def __init__(self, *, http_client: HttpClient | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (settings.TWILIO_ACCOUNT_SID and settings.TWILIO_AUTH_TOKEN and settings.TWILIO_FROM):
            raise ImproperlyConfigured("TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_FROM must be set")
        client = http_client or self.http_client
        if client is None:
            from twilio.http.http_client import TwilioHttpClient

            client = TwilioHttpClient(timeout=TIMEOUT)
        self.client = Client(settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN, http_client=client)

    def send_messages(self, messages: list[SMSMessage]) -> int:
        sent = 0
        for message in messages:
            sender = message.from_ or settings.TWILIO_FROM
            kwargs: dict[str, Any] = {"to": message.to, "body": message.body}
            if sender.startswith("MG"):
                kwargs["messaging_service_sid"] = sender
            else:
                kwargs["from_"] = sender
            if message.status_callback:
                kwargs["status_callback"] = message.status_callback
            try:
                result = self.client.messages.create(**kwargs)
            except TwilioRestException as error:
                if self.fail_silently:
                    continue
                raise SMSError(
                    str(error.msg)[:500], code=str(error.code or error.status), retry=_retryable(error)
                ) from error
            except (TwilioException, OSError) as error:
                # Timeouts and connection errors: the provider may be down for a while.
                if self.fail_silently:
                    continue
                raise SMSError(f"{type(error).__name__}: {error}"[:500], retry=True) from error
            message.provider_id = result.sid or ""
            sent += 1
        return sent


def _retryable(error: TwilioRestException) -> bool:
    if error.code in PERMANENT_CODES:
        return False
    return error.status == 429 or error.status >= 500
