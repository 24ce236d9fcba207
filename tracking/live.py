"""Live pushes to open tracking pages: the one place that talks to the channel layer.

Called by the intake after its transaction commits, with what changed. The tracking page
(issue 3) fills these in; until then nothing is pushed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracking.models import Delivery, Driver
    from tracking.services import Change


def publish_changes(*, changes: Sequence[Change]) -> None:
    """Status, ETA, details and proof changes of deliveries, in the order they were applied."""


def publish_positions(*, drivers: Sequence[Driver]) -> None:
    """Drivers whose newest position moved forward in this batch."""


def publish_delivery(*, delivery: Delivery) -> None:
    """Push the current state of one delivery (status, ETA, window...) to its open pages.

    For changes made outside the intake, e.g. a booked slot; call it after the commit.
    """
