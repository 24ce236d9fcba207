"""Admin logins lock out after repeated failures (django-axes; issue #7 point 3)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

pytestmark = pytest.mark.django_db
PASSWORD = "a-long-password-1"


@pytest.fixture
def staff() -> User:
    return User.objects.create_superuser("staff", "staff@example.com", PASSWORD)


def log_in(client: Client, password: str, **headers: str) -> Any:
    return client.post(
        "/admin/login/?next=/admin/", {"username": "staff", "password": password}, headers=headers
    )


def is_logged_in(client: Client) -> bool:
    return client.get("/admin/").status_code == 200


def fail_until_locked(client: Client, **headers: str) -> None:
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert log_in(client, "wrong", **headers).status_code == 200  # the form again, with its error
    assert log_in(client, "wrong", **headers).status_code == 429


def test_five_failures_lock_the_address_out_even_for_the_right_password(staff: User) -> None:
    assert settings.AXES_FAILURE_LIMIT == 5
    client = Client(REMOTE_ADDR="198.51.100.7")
    fail_until_locked(client)
    response = log_in(client, PASSWORD)
    assert response.status_code == 429
    assert not is_logged_in(client)


def test_a_lockout_is_per_address_so_nobody_can_lock_staff_out_from_elsewhere(staff: User) -> None:
    fail_until_locked(Client(REMOTE_ADDR="198.51.100.7"))
    colleague = Client(REMOTE_ADDR="203.0.113.20")
    assert log_in(colleague, PASSWORD).status_code == 302
    assert is_logged_in(colleague)


def test_a_spoofed_forwarded_header_does_not_dodge_the_lockout(staff: User) -> None:
    client = Client(REMOTE_ADDR="198.51.100.7")
    fail_until_locked(client, **{"X-Forwarded-For": "10.0.0.1"})
    assert log_in(client, PASSWORD, **{"X-Forwarded-For": "10.0.0.99"}).status_code == 429


def test_the_lockout_ends_after_the_cool_off(staff: User) -> None:
    client = Client(REMOTE_ADDR="198.51.100.7")
    fail_until_locked(client)
    with time_machine.travel(settings.AXES_COOLOFF_TIME + timedelta(minutes=1)):
        assert log_in(client, PASSWORD).status_code == 302


def test_axes_reset_unlocks_at_once(staff: User) -> None:
    client = Client(REMOTE_ADDR="198.51.100.7")
    fail_until_locked(client)
    assert AccessAttempt.objects.filter(ip_address="198.51.100.7").exists()
    call_command("axes_reset_ip", "198.51.100.7")
    assert log_in(client, PASSWORD).status_code == 302
    assert is_logged_in(client)


def test_a_success_before_the_limit_clears_the_count(staff: User) -> None:
    client = Client(REMOTE_ADDR="198.51.100.7")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        log_in(client, "wrong")
    assert log_in(client, PASSWORD).status_code == 302
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert log_in(client, "wrong").status_code == 200
    assert log_in(client, PASSWORD).status_code == 302


@pytest.mark.parametrize(
    "username", ["", "x" * 10_000, "' OR 1=1 --", "staff\x00", "\u202estaff", "😀" * 100]
)
def test_hostile_usernames_are_refused_without_an_error(username: str) -> None:
    response = Client().post("/admin/login/", {"username": username, "password": "x" * 5000})
    assert response.status_code in (200, 400, 429)
