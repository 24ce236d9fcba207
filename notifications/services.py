"""Customer notifications: which changes call for a message, and sending it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracking.models import Delivery
    from tracking.services import Change


def notifications_for_changes(*, changes: Sequence[Change]) -> None:
    """Write the notification rows that `changes` call for, in the caller's transaction.

    Called by the intake inside the transaction that applied the events, so that a message
    exists if and only if its cause was committed.
    """


def notifications_for_booking(*, delivery: Delivery, moved: bool) -> None:
    """Write the slot-booked (or moved) confirmation, in the booking's transaction.

    `delivery.window_start`/`window_end` already hold the booked slot.
    """
