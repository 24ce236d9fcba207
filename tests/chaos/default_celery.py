"""The project's Celery app with Celery's default delivery settings, for control runs: acks
before the task runs (acks_late off), a lost worker's task not requeued, prefetch 4. What a
plain `celery -A config worker` would do without config/settings.py's choices."""

from __future__ import annotations

from config.celery import app

app.conf.update(task_acks_late=False, task_reject_on_worker_lost=False, worker_prefetch_multiplier=4)
