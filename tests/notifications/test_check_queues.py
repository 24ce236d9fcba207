"""`manage.py check_queues`: the liveness check that sees due work nobody takes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from notifications.models import Notification
from tests.notifications.conftest import make_delivery

pytestmark = pytest.mark.django_db


def queued(*, due_ago: float, **fields) -> Notification:
    delivery = make_delivery()
    return Notification.objects.create(
        delivery=delivery, channel="sms", kind="received", recipient="+19565550123", body="hi",
        dedupe_key=f"{delivery.pk}:received:sms", next_attempt_at=timezone.now() - timedelta(seconds=due_ago),
        **fields,
    )  # fmt: skip


def test_a_message_due_for_longer_than_the_threshold_makes_the_check_fail(capsys):
    queued(due_ago=90)
    with pytest.raises(CommandError, match="stuck: notifications"):
        call_command("check_queues", "--stuck-after", "60")


def test_messages_due_only_briefly_or_in_the_future_pass_the_check(capsys):
    queued(due_ago=5)
    queued(due_ago=-3600)  # backoff or quiet hours: not due yet
    call_command("check_queues", "--stuck-after", "60")
    assert capsys.readouterr().out.startswith("ok: notifications: 1 due")


def test_a_message_whose_senders_lease_ran_out_long_ago_counts_as_stuck():
    queued(due_ago=600, status="sending", lease_until=timezone.now() - timedelta(seconds=120))
    with pytest.raises(CommandError):
        call_command("check_queues", "--stuck-after", "60")


def test_a_message_being_sent_under_a_live_lease_is_not_stuck(capsys):
    queued(due_ago=600, status="sending", lease_until=timezone.now() + timedelta(seconds=60))
    call_command("check_queues")
    assert "notifications: 0 due" in capsys.readouterr().out
