"""Staff replay stored provider payloads from the admin after a mapping fix: what failed or was
rejected is applied, what was applied is not applied twice."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from tests.integrations.conftest import post_onfleet, post_spoke, recorded
from tracking.integrations import onfleet, services
from tracking.integrations.mapping import Mapped
from tracking.models import Delivery, InboundEvent, PayloadOutcome, ProviderPayload

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/tracking/providerpayload/"
TASK = "kT3~zq9PbN1fZp0*rLm4sWx2"


def staff(*, can_replay: bool) -> Client:
    user = User.objects.create_user("desk", password="x", is_staff=True)
    codenames = ["view_providerpayload"] + (["change_providerpayload"] if can_replay else [])
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def replay(client: Client, *payloads: ProviderPayload) -> Any:
    return client.post(
        CHANGELIST, {"action": "replay", "_selected_action": [p.pk for p in payloads]}, follow=True
    )


def buggy_onfleet(document: Any) -> Mapped:
    """A mapping with a bug: taskStarted becomes a status the contract does not have."""
    mapped = onfleet.map_payload(document)
    for event in mapped.events:
        if event["type"] == "delivery.status":
            event["data"]["status"] = "started"
    return mapped


def test_a_replay_after_a_mapping_fix_applies_what_was_rejected(client, monkeypatch):
    post_onfleet(client, recorded("onfleet", "task_created"))
    monkeypatch.setitem(services.MAPPERS, "onfleet", buggy_onfleet)
    assert post_onfleet(client, recorded("onfleet", "task_started")).json()["outcome"] == "rejected"
    assert Delivery.objects.get().status == "created"
    monkeypatch.undo()  # the fix is deployed

    payload = ProviderPayload.objects.get(kind="taskStarted")
    response = replay(staff(can_replay=True), payload)
    assert response.status_code == 200
    assert "1 payload replayed." in response.content.decode()
    payload.refresh_from_db()
    assert (payload.outcome, payload.replays) == (PayloadOutcome.APPLIED, 1)
    assert [r["result"] for r in payload.results] == ["duplicate", "accepted"]  # upsert kept, status applied
    assert Delivery.objects.get().status == "out_for_delivery"


def test_replaying_an_applied_payload_has_no_second_effect(client):
    for name in ("task_created", "task_started"):
        post_onfleet(client, recorded("onfleet", name))
    events, payloads = InboundEvent.objects.count(), list(ProviderPayload.objects.all())
    replay(staff(can_replay=True), *payloads)
    assert InboundEvent.objects.count() == events
    for payload in ProviderPayload.objects.all():
        assert payload.replays == 1
        assert {r["result"] for r in payload.results} == {"duplicate"}


def test_a_payload_whose_mapping_raised_is_applied_by_a_replay(client, monkeypatch):
    monkeypatch.setitem(services.MAPPERS, "spoke", lambda document: 1 / 0)
    post_spoke(client, recorded("spoke", "stop_allocated"))
    monkeypatch.undo()
    payload = ProviderPayload.objects.get()
    assert payload.outcome == PayloadOutcome.FAILED and "ZeroDivisionError" in payload.error
    replay(staff(can_replay=True), payload)
    payload.refresh_from_db()
    assert (payload.outcome, payload.kind, payload.reference) == (
        PayloadOutcome.APPLIED, "stop.allocated", "plans/zeOCJaJCzZhpKVCVAC9o/stops/rpX5zK2kRFlIfwREp1js",
    )  # fmt: skip
    assert Delivery.objects.get().status == "scheduled"


def test_staff_who_may_only_view_cannot_replay(client, monkeypatch):
    monkeypatch.setitem(services.MAPPERS, "onfleet", lambda document: 1 / 0)
    post_onfleet(client, recorded("onfleet", "task_created"))
    monkeypatch.undo()
    viewer = staff(can_replay=False)
    assert viewer.get(CHANGELIST).status_code == 200
    replay(viewer, ProviderPayload.objects.get())
    assert ProviderPayload.objects.get().replays == 0
    assert not Delivery.objects.exists()


def test_staff_read_a_payload_and_its_results_but_cannot_edit_it(client):
    post_onfleet(client, recorded("onfleet", "task_created"))
    payload = ProviderPayload.objects.get()
    desk = staff(can_replay=True)
    page = desk.get(f"{CHANGELIST}{payload.pk}/change/")
    assert page.status_code == 200
    assert TASK in page.content.decode()
    assert f"/admin/tracking/delivery/{Delivery.objects.get().pk}/change/" in page.content.decode()
    assert desk.post(f"{CHANGELIST}{payload.pk}/change/", {"body": "{}"}).status_code == 403
    assert desk.get(f"{CHANGELIST}?q={TASK}").status_code == 200
