"""The messages' admin: who may send a dead message again."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from notifications.models import Notification
from tests.notifications.conftest import make_delivery
from tests.tracking.support_factories import support_user

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/notifications/notification/"


def _dead_message() -> Notification:
    from django.utils import timezone

    return Notification.objects.create(
        delivery=make_delivery(), channel="sms", kind="out_for_delivery", recipient="+19565550123",
        body="On its way", dedupe_key="dead-1", status="dead", attempts=12, next_attempt_at=timezone.now(),
    )  # fmt: skip


def _send_again(client: Client, message: Notification) -> Any:
    return client.post(CHANGELIST, {"action": "send_again", "_selected_action": [message.pk]})


def test_a_support_agent_sees_messages_but_cannot_send_a_dead_one_again(client: Client) -> None:
    message = _dead_message()
    client.force_login(support_user())
    page = client.get(CHANGELIST)
    assert page.status_code == 200 and "send_again" not in page.content.decode()
    _send_again(client, message)
    message.refresh_from_db()
    assert message.status == "dead"


def test_staff_who_may_change_messages_send_a_dead_one_again(client: Client) -> None:
    message = _dead_message()
    client.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw"))
    assert "send_again" in client.get(CHANGELIST).content.decode()
    _send_again(client, message)
    message.refresh_from_db()
    assert (message.status, message.attempts) == ("queued", 0)
