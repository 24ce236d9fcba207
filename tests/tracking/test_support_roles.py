"""The "Support" group from the data migration: sees everything a call needs and uses the
desk's actions; cannot delete deliveries, events or messages, nor edit what the routing
backend owns."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.utils import timezone

from notifications.models import Notification
from tests.tracking.support_factories import action_url, logged_in, make_delivery, page_url, support_user
from tracking.models import EventResult, InboundEvent, OutboundEvent, SupportAction
from tracking.support import support_nonce

pytestmark = pytest.mark.django_db


@pytest.fixture
def rows():
    delivery = make_delivery(reference="ORD-ROLE-1", customer_name="Zoë Ångström")
    now = timezone.now()
    event = InboundEvent.objects.create(
        event_id="evt-role-1",
        type="delivery.status",
        reference=delivery.reference,
        delivery=delivery,
        payload={"data": {"status": "scheduled"}},
        result=EventResult.ACCEPTED,
        received_at=now,
        occurred_at=now,
    )
    message = Notification.objects.create(
        delivery=delivery,
        channel="sms",
        kind="received",
        recipient=delivery.phone,
        body="x",
        dedupe_key="role:1",
        next_attempt_at=now,
    )
    outbound = OutboundEvent.objects.create(
        event_id="pl_role_1",
        type="delivery.feedback",
        delivery=delivery,
        data={},
        occurred_at=now,
        next_attempt_at=now,
        status="failed",
    )
    return {"delivery": delivery, "inboundevent": event, "notification": message, "outboundevent": outbound}


URLS = {
    "delivery": "/admin/tracking/delivery/",
    "inboundevent": "/admin/tracking/inboundevent/",
    "outboundevent": "/admin/tracking/outboundevent/",
    "notification": "/admin/notifications/notification/",
}


def test_the_migration_creates_the_support_group_with_view_and_action_permissions() -> None:
    codenames = set(Group.objects.get(name="Support").permissions.values_list("codename", flat=True))
    assert {"view_delivery", "view_notification", "add_supportaction", "view_support_kpis"} <= codenames
    assert not {c for c in codenames if c.startswith("delete_")}
    assert not {"change_delivery", "change_inboundevent", "change_notification", "add_delivery"} & codenames


def test_a_support_agent_views_and_searches_everything_a_call_needs(rows) -> None:
    agent = logged_in(support_user())
    for name, url in URLS.items():
        assert agent.get(url).status_code == 200, url
        assert agent.get(f"{url}{rows[name].pk}/change/").status_code == 200, name
    for path in (
        "/admin/scheduling/booking/",
        "/admin/scheduling/slot/",
        "/admin/notifications/consent/",
        "/admin/tracking/delivery/kpis/",
    ):
        assert agent.get(path).status_code == 200, path
    results = agent.get(URLS["delivery"], {"q": "zoe angstrom"}).context["cl"].result_list
    assert list(results) == [rows["delivery"]]


def test_a_support_agent_uses_each_action(rows) -> None:
    agent = logged_in(support_user())
    delivery = rows["delivery"]
    page = agent.get(page_url(delivery)).content.decode()
    for action in ("resend", "reissue", "slot", "contact", "note"):
        assert action_url(delivery, action) in page
    agent.post(action_url(delivery, "note"), {"nonce": support_nonce(), "text": "checked"})
    agent.post(action_url(delivery, "contact"), {"nonce": support_nonce(), "channel": "phone"})
    agent.post(action_url(delivery, "reissue"), {"nonce": support_nonce(), "token": delivery.tracking_token})
    assert set(SupportAction.objects.values_list("kind", flat=True)) == {"note", "contact", "token_reissued"}


def test_a_support_agent_cannot_delete_deliveries_events_or_messages(rows) -> None:
    agent = logged_in(support_user())
    for name, url in URLS.items():
        pk = rows[name].pk
        assert agent.get(f"{url}{pk}/delete/").status_code == 403, name
        assert agent.post(f"{url}{pk}/delete/", {"post": "yes"}).status_code == 403, name
        bulk = agent.post(url, {"action": "delete_selected", "_selected_action": [pk], "post": "yes"})
        assert bulk.status_code in (200, 302), name
        assert type(rows[name]).objects.filter(pk=pk).exists(), name


def test_a_support_agent_cannot_edit_what_the_routing_backend_owns(rows) -> None:
    agent = logged_in(support_user())
    delivery = rows["delivery"]
    edit = {"reference": "HACKED", "customer_name": "x", "status": "delivered", "eta": "", "zone_code": "z"}
    assert agent.post(page_url(delivery), edit).status_code == 403
    assert (
        agent.post(
            f"{URLS['inboundevent']}{rows['inboundevent'].pk}/change/", {"result": "stale"}
        ).status_code
        == 403
    )
    assert (
        agent.post(f"{URLS['notification']}{rows['notification'].pk}/change/", {"status": "sent"}).status_code
        == 403
    )
    assert agent.get(f"{URLS['delivery']}add/").status_code == 403
    delivery.refresh_from_db()
    assert (delivery.reference, delivery.status) == ("ORD-ROLE-1", "scheduled")
    assert b'name="_save"' not in agent.get(page_url(delivery)).content


def test_staff_outside_the_group_see_nothing_and_viewers_cannot_act(rows) -> None:
    outsider = logged_in(User.objects.create(username="outsider", is_staff=True))
    delivery = rows["delivery"]
    assert outsider.get(page_url(delivery)).status_code == 403
    assert (
        outsider.post(action_url(delivery, "note"), {"nonce": support_nonce(), "text": "x"}).status_code
        == 403
    )
    assert outsider.get("/admin/tracking/delivery/kpis/").status_code == 403

    viewer = User.objects.create(username="viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_delivery"))
    client = logged_in(viewer)
    page = client.get(page_url(delivery))
    assert page.status_code == 200 and action_url(delivery, "note").encode() not in page.content
    assert (
        client.post(action_url(delivery, "note"), {"nonce": support_nonce(), "text": "x"}).status_code == 403
    )
    assert not SupportAction.objects.exists()


def test_a_support_agent_may_retry_an_outbound_event_that_gave_up_but_not_edit_it(rows) -> None:
    agent = logged_in(support_user())
    failed = rows["outboundevent"]
    page = agent.get(f"{URLS['outboundevent']}{failed.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content
    agent.post(URLS["outboundevent"], {"action": "retry_now", "_selected_action": [failed.pk]})
    failed.refresh_from_db()
    assert failed.status == "queued"
