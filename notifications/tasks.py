"""Thin Celery tasks: load by id, call the service, own the retry policy."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from notifications.services import SEND_CHUNK, notification_due_ids, notifications_deliver, reminders_queue

# Waits longer than this stay in the database (next_attempt_at) for the sweeper; shorter ones
# ride on a Celery countdown, far below the broker's visibility timeout.
SHORT_WAIT = 60.0
# Waits of 1, 2, 4 ... 30 s: about three minutes of database outage, then the sweeper's turn.
DATABASE_RETRIES = 8
DATABASE_RETRY_WAIT = 30.0


@shared_task(bind=True)
def notification_send(self: Any, notification_ids: list[int] | int) -> None:
    ids = [notification_ids] if isinstance(notification_ids, int) else notification_ids
    # The task id owns the lease: if this process dies mid-send, Celery redelivers the same id
    # (acks_late, reject_on_worker_lost) and the redelivery takes the messages back at once.
    try:
        retries = notifications_deliver(notification_ids=ids, owner=self.request.id or "")
    except (OperationalError, InterfaceError) as error:
        if settings.CELERY_TASK_ALWAYS_EAGER:
            raise
        # The database went away mid-chunk (a restart, a failover). The same task id comes back
        # in a moment and takes back the messages it had claimed, where they would otherwise
        # wait for their lease to run out and the sweeper.
        wait = min(2.0**self.request.retries, DATABASE_RETRY_WAIT)
        if wait <= SHORT_WAIT:  # always so; said for the static checks of O9
            raise self.retry(exc=error, countdown=wait, max_retries=DATABASE_RETRIES) from error
        raise
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return  # no worker to wait in: the sweeper's next pass tries again
    for notification_id, delay in retries.items():
        if delay <= SHORT_WAIT:
            notification_send.apply_async(([notification_id],), countdown=delay)


@shared_task
def notifications_sweep() -> int:
    ids = notification_due_ids()
    for start in range(0, len(ids), SEND_CHUNK):
        notification_send.delay(ids[start : start + SEND_CHUNK])
    return len(ids)


@shared_task(name="notifications.tasks.reminders_queue")
def reminders_queue_task() -> int:
    return reminders_queue()
