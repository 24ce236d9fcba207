"""The send task when the database goes away mid-chunk: it retries itself under the same task
id, which owns the lease of the messages it had claimed, so the retry takes them back."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from notifications import tasks


def test_a_send_whose_database_went_away_retries_under_the_same_task_id(monkeypatch, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = False  # as on a worker; apply() still runs it here
    owners: list[str] = []

    def deliver(*, notification_ids, owner):
        owners.append(owner)
        if len(owners) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return {}

    monkeypatch.setattr(tasks, "notifications_deliver", deliver)
    result = tasks.notification_send.apply(args=([7, 8],), task_id="task-abc")
    assert result.successful()
    assert owners == ["task-abc", "task-abc"]


def test_a_database_that_stays_away_fails_the_task_after_its_retries(monkeypatch, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    calls = []

    def deliver(*, notification_ids, owner):
        calls.append(owner)
        raise OperationalError("connection refused")

    monkeypatch.setattr(tasks, "notifications_deliver", deliver)
    result = tasks.notification_send.apply(args=([7],), task_id="task-xyz")
    assert result.failed() and isinstance(result.result, OperationalError)
    assert len(calls) == tasks.DATABASE_RETRIES + 1  # then the lease and the sweeper take over


def test_in_eager_mode_the_error_is_not_retried(monkeypatch, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True

    def deliver(*, notification_ids, owner):
        raise OperationalError("connection refused")

    monkeypatch.setattr(tasks, "notifications_deliver", deliver)
    with pytest.raises(OperationalError):
        tasks.notification_send.apply(args=([7],), throw=True)
