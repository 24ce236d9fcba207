"""Thin Celery tasks: load by id, call the service, own the retry policy."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from tracking.outbound import outbound_deliver, outbound_due_ids

# Waits longer than this stay in the database for the sweeper; shorter ones ride on a Celery
# countdown, well under the broker's visibility timeout.
SHORT_WAIT = 60.0


@shared_task
def outbound_send(outbound_id: int) -> None:
    delay = outbound_deliver(outbound_id=outbound_id)
    if delay is not None and delay <= SHORT_WAIT and not settings.CELERY_TASK_ALWAYS_EAGER:
        outbound_send.apply_async((outbound_id,), countdown=delay)


@shared_task
def outbound_sweep() -> int:
    ids = outbound_due_ids()
    for outbound_id in ids:
        outbound_send.delay(outbound_id)
    return len(ids)
