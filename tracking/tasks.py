"""Thin Celery tasks: load by id, call the service, own the retry policy."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from tracking.outbound import outbound_deliver, outbound_dispatch_due

# Waits longer than this stay in the database for the sweeper; shorter ones ride on a Celery
# countdown, well under the broker's visibility timeout (a countdown past it is redelivered
# early, and lost with the worker that holds it).
SHORT_WAIT = 60.0


@shared_task(bind=True)
def outbound_send(self: Any, outbound_id: int) -> None:
    delay = outbound_deliver(outbound_id=outbound_id)
    # Eagerly (embedded mode) there is no worker to come back later: the row waits in the
    # database instead of recursing here.
    if delay is not None and delay <= SHORT_WAIT and not self.request.is_eager:
        outbound_send.apply_async((outbound_id,), countdown=min(delay, SHORT_WAIT))


@shared_task
def outbound_sweep() -> int:
    ids = outbound_dispatch_due()
    for outbound_id in ids:
        outbound_send.delay(outbound_id)
    return len(ids)


@shared_task
def retention_run() -> int:
    """Beat's privacy-retention job: old positions and finished deliveries' personal data."""
    from tracking.privacy import retention_run as run

    return run().changed
