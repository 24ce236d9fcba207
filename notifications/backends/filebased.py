"""Writes one file per message into SMS_FILE_PATH: recipient, sender, body."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from notifications.backends import BaseSMSBackend, SMSMessage


class SMSBackend(BaseSMSBackend):
    def __init__(self, *, file_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        path = file_path or settings.SMS_FILE_PATH
        if not path:
            raise ImproperlyConfigured("SMS_FILE_PATH must be set for the file-based SMS backend")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def send_messages(self, messages: list[SMSMessage]) -> int:
        for message in messages:
            message.provider_id = f"file-{uuid.uuid4().hex}"
            target = self.path / f"{message.provider_id}.txt"
            temporary = target.with_suffix(".tmp")
            temporary.write_text(
                f"To: {message.to}\nFrom: {message.from_}\n\n{message.body}\n", encoding="utf-8"
            )
            # Readers never see half a message.
            os.replace(temporary, target)
        return len(messages)
