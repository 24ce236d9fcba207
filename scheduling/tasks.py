"""Celery tasks of scheduling: thin wrappers around the services."""

from __future__ import annotations

from celery import shared_task

from scheduling import services


@shared_task
def slots_generate() -> int:
    """Beat job: keep PORCHLIGHT_SLOT_DAYS_AHEAD days of slots generated (idempotent)."""
    return services.slots_generate()
