"""The intake's lock query (tracking.services._lock_deliveries) is composed once, not by the
ORM per request: it must still give what the ORM's select_related query gives, and lock."""

from __future__ import annotations

import threading

import pytest
from django.db import DatabaseError, connection, connections, transaction
from django.utils import timezone

from notifications.models import Preference
from tests.tracking.support_factories import make_delivery, make_driver
from tracking.models import Delivery
from tracking.services import _lock_deliveries


def orm_query(references: set[str]) -> dict[str, Delivery]:
    found = Delivery.objects.select_related("driver", "notification_preference").filter(
        reference__in=references
    )
    return {delivery.reference: delivery for delivery in found}


def values_of(instance: object) -> dict[str, object]:
    return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}  # type: ignore[attr-defined]


@pytest.mark.django_db
def test_the_deliveries_their_drivers_and_preferences_are_what_the_orm_loads(django_assert_num_queries):
    driven = make_delivery(driver=make_driver(lat=27.5, lon=-99.5, position_recorded_at=timezone.now()))
    Preference.objects.create(delivery=driven, sms=False)
    bare = make_delivery(eta=timezone.now())
    make_delivery()  # not asked for
    references = {driven.reference, bare.reference, "ORD-UNKNOWN"}

    # One statement; PostgreSQL then waits on the unknown reference's advisory lock and looks again.
    queries = 1 if connection.vendor == "sqlite" else 3
    with transaction.atomic(), django_assert_num_queries(queries):
        locked = _lock_deliveries(references)

    expected = orm_query(references)
    assert locked.keys() == expected.keys() == {driven.reference, bare.reference}
    for reference, delivery in locked.items():
        assert delivery._state.adding is False
        assert delivery.get_deferred_fields() == set()
        assert values_of(delivery) == values_of(expected[reference])
    with django_assert_num_queries(0):
        driver = locked[driven.reference].driver
        preference = locked[driven.reference].notification_preference
        assert locked[bare.reference].driver is None
        assert getattr(locked[bare.reference], "notification_preference", None) is None
        assert preference.delivery is locked[driven.reference]
    assert values_of(driver) == values_of(expected[driven.reference].driver)
    assert values_of(preference) == values_of(expected[driven.reference].notification_preference)
    assert preference.sms is False


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_deliveries_stay_locked_until_the_transaction_ends():
    delivery = make_delivery()
    outcome: list[str] = []

    def try_to_lock() -> None:
        try:
            with transaction.atomic():
                Delivery.objects.select_for_update(nowait=True).get(pk=delivery.pk)
            outcome.append("locked")
        except DatabaseError:
            outcome.append("held by the other")
        finally:
            connections.close_all()

    with transaction.atomic():
        assert set(_lock_deliveries({delivery.reference})) == {delivery.reference}
        other = threading.Thread(target=try_to_lock)
        other.start()
        other.join()
    after = threading.Thread(target=try_to_lock)
    after.start()
    after.join()
    assert outcome == ["held by the other", "locked"]
