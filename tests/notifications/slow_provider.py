"""A fake SMS provider for the worker-kill test: every call takes a while and leaves a file
(named after the message's notification id), so calls can be counted after a kill -9."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from notifications.backends import BaseSMSBackend, SMSMessage


class SMSBackend(BaseSMSBackend):
    def send_messages(self, messages: list[SMSMessage]) -> int:
        folder = Path(os.environ["SLOW_PROVIDER_PATH"])
        for message in messages:
            time.sleep(float(os.environ.get("SLOW_PROVIDER_SECONDS", "0.05")))
            notification_id = message.status_callback.rsplit("=", 1)[1]
            message.provider_id = uuid.uuid4().hex
            (folder / f"{notification_id}-{message.provider_id}").write_text(message.body, encoding="utf-8")
        return len(messages)
