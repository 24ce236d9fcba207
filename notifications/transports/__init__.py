"""One class per channel, behind a small base: `send(notification) -> provider_id`."""

from __future__ import annotations

from notifications.transports.base import Transport, TransportError


def transport_for(channel: str) -> Transport:
    from notifications.transports.email import EmailTransport
    from notifications.transports.sms import SMSTransport

    transports: dict[str, type[Transport]] = {"sms": SMSTransport, "email": EmailTransport}
    return transports[channel]()


__all__ = ["Transport", "TransportError", "transport_for"]
