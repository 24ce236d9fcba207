from __future__ import annotations

from django.conf import settings

from config.celery import app


def test_every_beat_entry_names_a_registered_task():
    app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled  # the sweepers, reminders and slot generation
    assert scheduled <= set(app.tasks), scheduled - set(app.tasks)
