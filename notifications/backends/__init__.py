"""SMS backends, chosen by setting SMS_BACKEND as Django chooses EMAIL_BACKEND."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string


@dataclass
class SMSMessage:
    to: str
    body: str
    from_: str = ""
    # Where the provider reports delivery; empty where the backend has no such thing.
    status_callback: str = ""
    # Filled by the backend: the provider's id for this message.
    provider_id: str = ""


class SMSError(Exception):
    """A send that did not happen. `retry` says whether trying again later may help."""

    def __init__(self, message: str, *, code: str = "", retry: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.retry = retry


class BaseSMSBackend:
    def __init__(self, *, fail_silently: bool = False, **kwargs: Any) -> None:
        self.fail_silently = fail_silently

    def send_messages(self, messages: list[SMSMessage]) -> int:
        raise NotImplementedError


def get_sms_backend(backend: str | None = None, **kwargs: Any) -> BaseSMSBackend:
    cls = import_string(backend or settings.SMS_BACKEND)
    return cls(**kwargs)  # type: ignore[no-any-return]
