"""On PostgreSQL, a provider's concurrent retries of one payload are kept once and applied once,
and a task's triggers racing each other end in the same state as in order."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from tests.integrations.conftest import post_onfleet, post_spoke, recorded
from tracking.models import Delivery, InboundEvent, ProviderPayload

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in threads released at once; each thread has its own connection."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = calls[index]()
        except Exception as error:  # reported by the assertions on the results
            results[index] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.fixture(autouse=True)
def _on_postgresql() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")


def test_eight_concurrent_copies_of_one_payload_are_kept_once_and_applied_once():
    body = recorded("onfleet", "task_created")
    responses = together([lambda: post_onfleet(Client(), body) for _ in range(8)])
    assert [getattr(r, "status_code", r) for r in responses] == [200] * 8
    assert sorted(r.json()["received"] for r in responses) == ["again"] * 7 + ["new"]
    payload = ProviderPayload.objects.get()
    assert payload.times_received == 8
    assert Delivery.objects.count() == 1
    assert InboundEvent.objects.filter(type="delivery.upserted").count() == 1


def test_a_tasks_triggers_racing_each_other_end_as_if_in_order():
    names = ["task_created", "task_assigned", "task_started", "task_arrival", "task_completed"]
    responses = together(
        [lambda name=name: post_onfleet(Client(), recorded("onfleet", name)) for name in names]
    )
    assert [getattr(r, "status_code", r) for r in responses] == [200] * len(names)
    assert Delivery.objects.get().status == "delivered"
    assert InboundEvent.objects.filter(type="delivery.status", result="accepted").count() >= 1


def test_spoke_and_native_upserts_racing_for_one_reference_make_one_delivery():
    bodies = ["stop_allocated", "stop_out_for_delivery", "stop_next_in_route"]
    responses = together([lambda name=name: post_spoke(Client(), recorded("spoke", name)) for name in bodies])
    assert [getattr(r, "status_code", r) for r in responses] == [200] * 3
    assert Delivery.objects.count() == 1
    assert Delivery.objects.get().status == "out_for_delivery"
