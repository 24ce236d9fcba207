"""Live pushes to open tracking pages: the one place that talks to the channel layer.

Called by the intake after its transaction commits, with what changed, and by slot booking
after a booking. Messages are the contract's (section 3): `status`, `eta`, `location`.

Fan-out design: two kinds of groups.

- `delivery.<pk>`: every socket open on that delivery's page. A status, ETA, details or proof
  change sends ONE group message carrying the contract messages, serialised once per page
  language (two), plus whether the delivery is close enough for its driver's position to be
  shown (the privacy rule) and which driver that is.
- `driver.<pk>`: one member per web process that has sockets of deliveries whose privacy rule
  currently allows positions of that driver (tracking.consumers._DriverHub). A ping is ONE
  group message to that group, serialised once, whatever the number of viewers; each process
  receives it once and writes it to its own sockets. Nothing in the request path loops over
  deliveries or looks them up.

Each consumer follows or drops its driver in its process's hub when a delivery message says the
rule changed (and checks the rule again on every ping, so a ping racing a "delivered" never
gets through).
The intake sends a batch's delivery changes before its positions, so the leave comes first.

A publish never raises into its caller: the intake must answer even when Redis is down. All
sends of one batch run together under one short timeout, and failures are logged. Pages that
missed a message recover from the snapshot they fetch on reconnect.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import translation

from tracking import background
from tracking.models import Status

if TYPE_CHECKING:
    from tracking.models import Delivery, Driver
    from tracking.services import Change

logger = logging.getLogger(__name__)

# A push is no longer waited for by the request (it runs on the server's loop), so it may wait
# for a busy Redis longer: at 1 s, whole batches of pushes were dropped during a reconnect storm
# of 2,000 sockets (S3), leaving open pages stale until the next change.
PUBLISH_TIMEOUT = 5.0
# Positions go out at ~10 m precision: enough for a map, no more (T3: at most 4 decimals).
POSITION_DECIMALS = 4


def delivery_group(delivery_id: int) -> str:
    return f"delivery.{delivery_id}"


def driver_group(driver_id: int) -> str:
    return f"driver.{driver_id}"


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def status_message(delivery: Delivery) -> dict[str, Any]:
    return {
        "type": "status",
        "status": delivery.status,
        "label": str(Status(delivery.status).label),
        "occurred_at": iso(delivery.status_at),
    }


def eta_message(delivery: Delivery) -> dict[str, Any]:
    narrowed = delivery.eta_window_start is not None
    return {
        "type": "eta",
        "eta": iso(delivery.eta),
        "window_start": iso(delivery.eta_window_start if narrowed else delivery.window_start),
        "window_end": iso(delivery.eta_window_end if narrowed else delivery.window_end),
        "stops_before": delivery.stops_before,
    }


def location_message(driver: Driver) -> dict[str, Any] | None:
    if driver.lat is None or driver.lon is None or driver.position_recorded_at is None:
        return None
    return {
        "type": "location",
        "lat": round(driver.lat, POSITION_DECIMALS),
        "lon": round(driver.lon, POSITION_DECIMALS),
        "heading": driver.heading,
        "recorded_at": iso(driver.position_recorded_at),
    }


def shows_position(delivery: Delivery) -> bool:
    return delivery.shows_live_position(live_map_stops=settings.PORCHLIGHT_LIVE_MAP_STOPS)


def delivery_state(delivery: Delivery) -> dict[str, Any]:
    """The group message for one delivery's viewers (also what a socket gets on connect)."""
    live = shows_position(delivery)
    driver = delivery.driver if live else None
    location = location_message(driver) if driver else None
    position_at = driver.position_recorded_at if driver and location else None
    texts: dict[str, list[str]] = {}
    for code, _ in settings.LANGUAGES:
        with translation.override(code):
            texts[code] = [json.dumps(status_message(delivery)), json.dumps(eta_message(delivery))]
    return {
        "type": "delivery.state",
        "texts": texts,
        "location": json.dumps(location) if location else None,
        "live": live,
        "driver": delivery.driver_id if live else None,
        "position_ts": position_at.timestamp() if position_at else None,
    }


def driver_ping(driver: Driver) -> dict[str, Any] | None:
    location = location_message(driver)
    if location is None or driver.position_recorded_at is None:
        return None
    return {
        "type": "driver.location",
        "driver": driver.pk,
        "text": json.dumps(location),
        "ts": driver.position_recorded_at.timestamp(),
    }


def publish_batch(*, changes: Sequence[Change], drivers: Sequence[Driver]) -> None:
    """What one intake batch changed: its deliveries' states, then its drivers' positions, in
    that order (a page told to stop following a driver hears it before the next ping)."""
    _send_safely(lambda: _change_sends(changes), lambda: _position_sends(drivers))


def publish_changes(*, changes: Sequence[Change]) -> None:
    """Status, ETA, details and proof changes of deliveries, in the order they were applied."""
    _send_safely(lambda: _change_sends(changes))


def publish_positions(*, drivers: Sequence[Driver]) -> None:
    """Drivers whose newest position moved forward in this batch: one message per driver."""
    _send_safely(lambda: _position_sends(drivers))


def publish_token_reissued(*, delivery: Delivery) -> None:
    """The delivery's link was reissued: sockets opened with any other token are closed, as
    their page now answers 404. Call it after the commit."""
    message = {"type": "delivery.token", "valid": token_digest(delivery.tracking_token)}
    _send_safely(lambda: [(delivery_group(delivery.pk), message)])


def token_digest(token: str) -> str:
    # The link itself never travels through Redis.
    return hashlib.sha256(token.encode()).hexdigest()


def _change_sends(changes: Sequence[Change]) -> list[tuple[str, dict[str, Any]]]:
    newest: dict[int, Delivery] = {}
    for change in changes:
        newest[change.delivery.pk] = change.delivery  # one message per delivery, its final state
    return [(delivery_group(pk), delivery_state(d)) for pk, d in newest.items()]


def _position_sends(drivers: Sequence[Driver]) -> list[tuple[str, dict[str, Any]]]:
    return [(driver_group(d.pk), message) for d in drivers if (message := driver_ping(d)) is not None]


def publish_delivery(*, delivery: Delivery) -> None:
    """Push the current state of one delivery (status, ETA, window...) to its open pages.

    For changes made outside the intake, e.g. a booked slot; call it after the commit.
    """
    _send_safely(lambda: [(delivery_group(delivery.pk), delivery_state(delivery))])


# The event loop of the server process (daphne), which owns the channel layer's connections.
_server_loop: asyncio.AbstractEventLoop | None = None


def remember_server_loop() -> None:
    """Called by the ASGI application (config.asgi) from the server's loop."""
    global _server_loop
    _server_loop = asyncio.get_running_loop()


def _send_safely(*builds: Any) -> None:
    """Send each build's messages, one build after the other.

    In a server process, from a request's thread, the sends are handed to the server's loop and
    not waited for: a slow or stalled Redis costs the request nothing (measured: a ping waited
    out a 6 s broker pause). Without a server loop (gunicorn, a Celery worker) but with a broker,
    they go to a loop of the process's own (tracking.background). Elsewhere (embedded mode, a
    command, an in-process test) they run here and now.
    """
    try:
        rounds = [sends for build in builds if (sends := build())]
        if not rounds:
            return
        loop = _server_loop
        if (loop is None or not loop.is_running()) and background.in_background():
            loop = background.event_loop()  # under gunicorn, in a worker: a loop of our own
        if loop is not None and loop.is_running() and not _running_in(loop):
            asyncio.run_coroutine_threadsafe(_send_rounds(rounds), loop).add_done_callback(_log_failure)
        else:
            async_to_sync(_send_rounds)(rounds)
    except Exception:
        # The pages heal from their snapshot; the caller (the intake) must not fail for this.
        logger.exception("live publish failed")


def _running_in(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("live publish failed: %r", future.exception())


async def _send_rounds(rounds: list[list[tuple[str, dict[str, Any]]]]) -> None:
    for sends in rounds:
        await _send_all(sends)


async def _send_all(sends: list[tuple[str, dict[str, Any]]]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    results = await asyncio.wait_for(
        asyncio.gather(
            *(layer.group_send(group, message) for group, message in sends), return_exceptions=True
        ),
        timeout=PUBLISH_TIMEOUT,
    )
    for result in results:
        if isinstance(result, BaseException):
            logger.warning("live publish to a group failed: %r", result)
