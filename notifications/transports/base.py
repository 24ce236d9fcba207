from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from notifications.models import Notification


class TransportError(Exception):
    """The message was not sent. `retry`: whether a later try may succeed; `code`: the provider's."""

    def __init__(self, message: str, *, code: str = "", retry: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.retry = retry


class Transport:
    def send(self, notification: Notification) -> str:
        """Hand the message to the provider; return the provider's id for it (may be empty)."""
        raise NotImplementedError
