"""Keeps messages in `outbox`, for tests (as django.core.mail.backends.locmem)."""

from __future__ import annotations

import itertools

from notifications.backends import BaseSMSBackend, SMSMessage

outbox: list[SMSMessage] = []
_ids = itertools.count(1)


class SMSBackend(BaseSMSBackend):
    def send_messages(self, messages: list[SMSMessage]) -> int:
        for message in messages:
            message.provider_id = f"locmem-{next(_ids)}"
            outbox.append(message)
        return len(messages)
