"""A fake SMS provider for the chaos tests, in the worker's process: every call takes a
while (SLOW_PROVIDER_SECONDS) and leaves a file named after the notification id, so calls can
be counted after a kill -9. A message to POISON_TO kills its own process (SIGKILL) after the
call is recorded: a poison message, as one that makes the provider's client crash or OOM."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

from notifications.backends import BaseSMSBackend, SMSMessage


class SMSBackend(BaseSMSBackend):
    def send_messages(self, messages: list[SMSMessage]) -> int:
        folder = Path(os.environ["SLOW_PROVIDER_PATH"])
        for message in messages:
            notification_id = message.status_callback.rsplit("=", 1)[1]
            message.provider_id = uuid.uuid4().hex
            (folder / f"{notification_id}-{message.provider_id}").write_text(message.body, encoding="utf-8")
            if message.to == os.environ.get("POISON_TO"):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(float(os.environ.get("SLOW_PROVIDER_SECONDS", "0.05")))
        return len(messages)
