"""Prints each SMS, so that the demo shows every message as it would be sent."""

from __future__ import annotations

import itertools
import sys
import threading
from typing import Any, TextIO

from notifications.backends import BaseSMSBackend, SMSMessage
from notifications.segments import sms_length

_ids = itertools.count(1)
_lock = threading.Lock()


class SMSBackend(BaseSMSBackend):
    def __init__(self, *, stream: TextIO | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stream = stream or sys.stdout

    def send_messages(self, messages: list[SMSMessage]) -> int:
        with _lock:
            for message in messages:
                message.provider_id = f"console-{next(_ids)}"
                length = sms_length(message.body)
                self.stream.write(
                    f"--- SMS to {message.to} from {message.from_ or '(default)'} "
                    f"[{length.encoding}, {length.units} units, {length.segments} segment(s)]\n"
                    f"{message.body}\n{'-' * 40}\n"
                )
            self.stream.flush()
        return len(messages)
