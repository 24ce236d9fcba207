"""Thin Celery tasks: load by id, call the service, own the retry policy."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from notifications.services import notification_deliver, notification_due_ids, reminders_queue

# Waits longer than this stay in the database (next_attempt_at) for the sweeper; shorter ones
# ride on a Celery countdown, far below the broker's visibility timeout.
SHORT_WAIT = 60.0


@shared_task
def notification_send(notification_id: int) -> None:
    delay = notification_deliver(notification_id=notification_id)
    if delay is not None and delay <= SHORT_WAIT and not settings.CELERY_TASK_ALWAYS_EAGER:
        notification_send.apply_async((notification_id,), countdown=delay)


@shared_task
def notifications_sweep() -> int:
    ids = notification_due_ids()
    for notification_id in ids:
        notification_send.delay(notification_id)
    return len(ids)


@shared_task(name="notifications.tasks.reminders_queue")
def reminders_queue_task() -> int:
    return reminders_queue()
