"""Live pushes (tracking.live): never in the intake's way, and across processes through Redis."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from channels.layers import channel_layers, get_channel_layer
from django.conf import settings
from django.utils import timezone

from tests.services import daphne
from tests.tracking.test_consumer import (  # noqa: F401 (layer: the session's own channel layer, autouse)
    SESSION_PREFIX,
    eta,
    layer,
    messages,
    open_socket,
    ping,
    run,
    status,
)
from tests.tracking.test_page import upsert_event
from tracking import live, signing
from tracking.models import Delivery

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_intake_answers_when_the_channel_layer_is_unreachable(
    post_events: Any, settings: Any, caplog: Any
) -> None:
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"], "prefix": SESSION_PREFIX},
        }
    }
    channel_layers.backends.clear()
    started = time.monotonic()
    response = post_events(
        {"events": [upsert_event("ORD-LIVE-DOWN"), status("ORD-LIVE-DOWN", "scheduled", -1)]}
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert [r["result"] for r in response.json()["results"]] == ["accepted", "accepted"]
    assert elapsed < live.PUBLISH_TIMEOUT + 2
    assert Delivery.objects.get(reference="ORD-LIVE-DOWN").status == "scheduled"


def test_a_stalled_channel_layer_holds_a_publish_for_at_most_the_timeout(monkeypatch: Any) -> None:
    delivery = Delivery.objects.create(
        reference="ORD-LIVE-STALL", customer_name="x", address_line1="x", city="x", postcode="x",
        country="US", lat=1.0, lon=1.0, details_at=timezone.now(),
    )  # fmt: skip

    async def stalled(group: str, message: dict[str, Any]) -> None:
        await asyncio.sleep(30)

    monkeypatch.setattr(get_channel_layer(), "group_send", stalled)
    started = time.monotonic()
    live.publish_delivery(delivery=delivery)  # must not raise
    assert time.monotonic() - started < live.PUBLISH_TIMEOUT + 0.5


def test_publish_delivery_pushes_a_booked_window_to_open_pages(post_events: Any) -> None:
    async def scenario() -> None:
        await sync_to_async(post_events)({"events": [upsert_event("ORD-LIVE-BOOK")]})
        delivery = await Delivery.objects.aget(reference="ORD-LIVE-BOOK")
        communicator, connected = await open_socket(delivery.tracking_token)
        assert connected
        await messages(communicator)
        start = timezone.now().replace(microsecond=0)
        await Delivery.objects.filter(pk=delivery.pk).aupdate(window_start=start, window_end=start)
        delivery = await Delivery.objects.aget(pk=delivery.pk)
        await sync_to_async(live.publish_delivery)(delivery=delivery)
        got = await messages(communicator)
        assert got[1]["type"] == "eta" and got[1]["window_start"] == live.iso(start)
        await communicator.disconnect()

    run(scenario)


# --- two daphne processes sharing Redis --------------------------------------------------


def _post(base: str, *events: dict[str, Any]) -> httpx.Response:
    body = json.dumps({"events": list(events)}).encode()
    headers = {
        "Content-Type": "application/json",
        signing.HEADER: signing.sign(secret=settings.PORCHLIGHT_ROUTING_SECRETS[0], body=body),
    }
    response = httpx.post(f"{base}/api/v1/events", content=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response


def _receive(socket: Any, *, want: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(socket.recv(timeout=max(0.01, deadline - time.monotonic())))
        if message["type"] == want:
            return message


@pytest.mark.postgres
@pytest.mark.redis
def test_an_event_posted_to_one_daphne_reaches_a_viewer_on_another() -> None:
    from websockets.sync.client import connect

    with (
        daphne(CHANNEL_LAYER_PREFIX=SESSION_PREFIX) as one,
        daphne(CHANNEL_LAYER_PREFIX=SESSION_PREFIX) as two,
    ):
        _post(
            one,
            upsert_event("ORD-LIVE-2D"),
            status("ORD-LIVE-2D", "out_for_delivery", -5, "drv_2d"),
            eta("ORD-LIVE-2D", -4, 1),
        )
        token = Delivery.objects.get(reference="ORD-LIVE-2D").tracking_token
        ws_url = two.replace("http://", "ws://") + f"/ws/t/{token}/"
        with connect(ws_url, origin=two) as viewer:  # type: ignore[arg-type]
            assert _receive(viewer, want="status")["status"] == "out_for_delivery"
            started = time.monotonic()
            _post(one, ping("drv_2d", -1, lat=27.55))
            location = _receive(viewer, want="location")
            assert location["lat"] == 27.55
            _post(one, status("ORD-LIVE-2D", "arriving", 0))
            assert _receive(viewer, want="status")["label"] == "Arriving soon"
            assert time.monotonic() - started < 5
        page = httpx.get(f"{two}/t/{token}/")
        assert page.status_code == 200 and "data-live-state" in page.text
        script = httpx.get(f"{two}/static/js/tracking.js")
        assert script.status_code == 200


@pytest.mark.postgres
@pytest.mark.redis
def test_a_foreign_origin_is_refused_by_a_real_daphne() -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with daphne(CHANNEL_LAYER_PREFIX=SESSION_PREFIX) as base:
        _post(base, upsert_event("ORD-LIVE-ORIGIN"))
        token = Delivery.objects.get(reference="ORD-LIVE-ORIGIN").tracking_token
        ws_url = base.replace("http://", "ws://") + f"/ws/t/{token}/"
        for origin in ("https://evil.example", None):
            with pytest.raises(InvalidStatus) as refused:
                connect(ws_url, origin=origin)  # type: ignore[arg-type]
            assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus):
            connect(base.replace("http://", "ws://") + f"/ws/t/{'A' * 32}/", origin=base)  # type: ignore[arg-type]


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_a_publish_after_ten_idle_seconds_still_arrives() -> None:
    """channels_redis#422: redis-py's 5 s socket_timeout killed idle consumers of the core layer."""
    from websockets.sync.client import connect

    with daphne(CHANNEL_LAYER_PREFIX=SESSION_PREFIX) as base:
        _post(base, upsert_event("ORD-LIVE-IDLE"))
        token = Delivery.objects.get(reference="ORD-LIVE-IDLE").tracking_token
        with connect(base.replace("http://", "ws://") + f"/ws/t/{token}/", origin=base) as viewer:  # type: ignore[arg-type]
            _receive(viewer, want="eta")
            time.sleep(10.5)  # the idleness is the condition under test, not a wait for one
            _post(base, status("ORD-LIVE-IDLE", "scheduled", 0))
            assert _receive(viewer, want="status")["status"] == "scheduled"
