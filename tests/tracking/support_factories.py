"""Factories and clients for the support desk tests (tests/tracking/test_support_*.py)."""

from __future__ import annotations

import importlib
import itertools
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.utils import timezone

from tracking.models import Delivery, Driver

_numbers = itertools.count(1)
CHANGELIST = "/admin/tracking/delivery/"


def make_delivery(**fields: Any) -> Delivery:
    n = next(_numbers)
    now = timezone.now()
    values: dict[str, Any] = {
        "reference": f"ORD-S{n:05d}",
        "customer_name": f"Customer {n}",
        "phone": f"+1956555{n % 10000:04d}",
        "email": f"customer{n}@example.com",
        "address_line1": "1201 Matamoros St",
        "city": "Laredo",
        "postcode": "78040",
        "country": "US",
        "lat": 27.5036,
        "lon": -99.5075,
        "timezone": "America/Chicago",
        "zone_code": "laredo-central",
        "window_start": now + timedelta(hours=2),
        "window_end": now + timedelta(hours=4),
        "details_at": now,
        "status": "scheduled",
    }
    values.update(fields)
    return Delivery.objects.create(**values)


def make_driver(**fields: Any) -> Driver:
    n = next(_numbers)
    values: dict[str, Any] = {"external_id": f"drv-s{n}", "name": "Sam Driver", "vehicle": "Van 3"}
    values.update(fields)
    return Driver.objects.create(**values)


def support_group() -> Group:
    """The group the data migration creates; rebuilt from the migration's own list when a
    transactional test has flushed the database since (flush keeps no migration data)."""
    group = Group.objects.filter(name="Support").first()
    if group is None:
        migration = importlib.import_module("tracking.migrations.0004_support_desk")
        group = Group.objects.create(name="Support")
        for label, codenames in migration.SUPPORT_PERMISSIONS.items():
            group.permissions.add(
                *Permission.objects.filter(content_type__app_label=label, codename__in=codenames)
            )
    return group


def support_user(username: str = "agent") -> User:
    """A staff member in the "Support" group, and nothing else."""
    user = User.objects.create(username=username, is_staff=True)
    user.groups.add(support_group())
    return user


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page_url(delivery: Delivery) -> str:
    return f"{CHANGELIST}{delivery.pk}/change/"


def action_url(delivery: Delivery, action: str) -> str:
    return f"{CHANGELIST}{delivery.pk}/support/{action}/"


def found(client: Client, term: str, **params: str) -> list[Delivery]:
    response = client.get(CHANGELIST, {"q": term, **params})
    assert response.status_code == 200, (term, response.status_code)
    return list(response.context["cl"].result_list)
