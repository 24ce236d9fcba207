"""The tracking socket `/ws/t/<token>/` with Channels' WebsocketCommunicator (issue 3, S1, T3).

Events go in through the real intake (signed), so what a socket receives is what the routing
backend caused. In the production pass the channel layer is channels-redis pub/sub, under a
prefix of this test session's own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.core.cache import cache
from django.utils import timezone

from config.asgi import application
from tests.tracking.test_page import upsert_event
from tracking import consumers
from tracking.models import Delivery

# Committed data: the consumer reads the database from its own thread, and closes that
# connection after each read as Django does after a request (CONN_MAX_AGE=0 with the pool).
pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://testserver")
SESSION_PREFIX = f"h4test-{uuid.uuid4().hex[:8]}"
_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def layer(settings: Any) -> Iterator[None]:
    if settings.REDIS_URL:
        settings.CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                "CONFIG": {"hosts": [settings.REDIS_URL], "prefix": SESSION_PREFIX},
            }
        }
    channel_layers.backends.clear()
    cache.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def intake(post_events: Any, django_capture_on_commit_callbacks: Any) -> Callable[..., Awaitable[Any]]:
    """Post signed events to the intake from async code, running its after-commit pushes."""

    def post(*events: dict[str, Any]) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            response = post_events({"events": list(events)})
        assert response.status_code == 200, response.content
        assert {r["result"] for r in response.json()["results"]} <= {"accepted", "duplicate"}
        return response

    return sync_to_async(post)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async_to_sync(scenario)()


def _at(minutes: float) -> str:
    return (timezone.now().replace(microsecond=0) + timedelta(minutes=minutes)).isoformat()


def status(reference: str, value: str, minutes: float, driver: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"reference": reference, "status": value}
    if driver:
        data["driver"] = {"id": driver, "name": "Sam Ortiz", "vehicle": "White van"}
    return {"id": f"ws_{next(_ids)}", "type": "delivery.status", "occurred_at": _at(minutes), "data": data}


def eta(reference: str, minutes: float, stops_before: int) -> dict[str, Any]:
    data = {"reference": reference, "eta": _at(minutes + 30), "stops_before": stops_before}
    return {"id": f"ws_{next(_ids)}", "type": "delivery.eta", "occurred_at": _at(minutes), "data": data}


def ping(driver: str, minutes: float, lat: float = 27.512345, lon: float = -99.487654) -> dict[str, Any]:
    data = {"driver_id": driver, "lat": lat, "lon": lon, "heading": 90, "recorded_at": _at(minutes)}
    return {"id": f"ws_{next(_ids)}", "type": "driver.location", "occurred_at": _at(minutes), "data": data}


async def open_socket(
    token: str, *, origin: tuple[bytes, bytes] | None = ORIGIN, lang: str = "en"
) -> tuple[WebsocketCommunicator, bool]:
    headers = [origin] if origin else []
    communicator = WebsocketCommunicator(application, f"/ws/t/{token}/?lang={lang}", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    return communicator, connected


async def messages(communicator: WebsocketCommunicator, *, quiet: float = 0.3) -> list[dict[str, Any]]:
    """Everything the socket received until it has been quiet for `quiet` seconds."""
    received = []
    # receive_nothing, not a timed-out receive: asgiref cancels the application on a timeout.
    while not await communicator.receive_nothing(timeout=quiet, interval=0.01):
        received.append(json.loads(await communicator.receive_from()))
    return received


async def new_delivery(intake: Any, reference: str, *, driver: str, stops_before: int) -> Delivery:
    await intake(
        upsert_event(reference),
        status(reference, "out_for_delivery", -10, driver),
        eta(reference, -9, stops_before),
    )
    return await Delivery.objects.aget(reference=reference)


def test_unknown_malformed_revoked_and_expired_tokens_are_refused_before_accept(intake: Any) -> None:
    async def scenario() -> None:
        await intake(
            upsert_event("ORD-WS-R1"), upsert_event("ORD-WS-R2"), status("ORD-WS-R2", "delivered", -1)
        )
        revoked = await Delivery.objects.aget(reference="ORD-WS-R1")
        await Delivery.objects.filter(pk=revoked.pk).aupdate(token_revoked_at=timezone.now())
        expired = await Delivery.objects.aget(reference="ORD-WS-R2")
        await Delivery.objects.filter(pk=expired.pk).aupdate(status_at=timezone.now() - timedelta(days=8))
        for token in (
            "A" * 32,
            "short",
            "<script>",
            "x" * 99,
            revoked.tracking_token,
            expired.tracking_token,
        ):
            communicator, connected = await open_socket(token)
            assert not connected, token
            await communicator.disconnect()

    run(scenario)


def test_a_foreign_origin_or_no_origin_is_refused_before_accept(intake: Any) -> None:
    async def scenario() -> None:
        await intake(upsert_event("ORD-WS-O"))
        delivery = await Delivery.objects.aget(reference="ORD-WS-O")
        for origin in ((b"origin", b"https://evil.example"), None, (b"origin", b"null")):
            communicator, connected = await open_socket(delivery.tracking_token, origin=origin)
            assert not connected, origin
            await communicator.disconnect()
        communicator, connected = await open_socket(delivery.tracking_token)
        assert connected
        await communicator.disconnect()

    run(scenario)


def test_a_viewer_gets_the_current_state_on_connect_in_its_language(intake: Any) -> None:
    async def scenario() -> None:
        delivery = await new_delivery(intake, "ORD-WS-C", driver="drv_ws_c", stops_before=5)
        communicator, connected = await open_socket(delivery.tracking_token, lang="es")
        assert connected
        first = await messages(communicator)
        assert [m["type"] for m in first] == ["status", "eta"]
        assert first[0] == {
            "type": "status", "status": "out_for_delivery", "label": "En camino",
            "occurred_at": delivery.status_at.isoformat(),
        }  # fmt: skip
        assert set(first[1]) == {"type", "eta", "window_start", "window_end", "stops_before"}
        assert first[1]["stops_before"] == 5
        await communicator.disconnect()

    run(scenario)


def test_status_and_eta_changes_reach_the_viewer_as_the_contract_says(intake: Any) -> None:
    async def scenario() -> None:
        delivery = await new_delivery(intake, "ORD-WS-S", driver="drv_ws_s", stops_before=8)
        communicator, _ = await open_socket(delivery.tracking_token)
        await messages(communicator)
        await intake(eta("ORD-WS-S", -5, 7))
        got = await messages(communicator)
        assert [m["type"] for m in got] == ["status", "eta"] and got[1]["stops_before"] == 7
        await intake(status("ORD-WS-S", "attempt_failed", -4))
        got = await messages(communicator)
        assert got[0]["status"] == "attempt_failed" and got[0]["label"] == "Delivery attempt failed"
        await communicator.disconnect()

    run(scenario)


def test_a_far_viewer_gets_no_positions_until_the_stop_is_close_and_none_after_delivery(intake: Any) -> None:
    async def scenario() -> None:
        delivery = await new_delivery(intake, "ORD-WS-F", driver="drv_ws_f", stops_before=6)
        communicator, _ = await open_socket(delivery.tracking_token)
        await messages(communicator)
        await intake(ping("drv_ws_f", -8))
        assert await messages(communicator) == []  # 6 stops away: no position at all

        await intake(eta("ORD-WS-F", -7, 3))
        got = await messages(communicator)
        assert [m["type"] for m in got] == ["status", "eta", "location"]
        assert got[2]["lat"] == 27.5123 and got[2]["lon"] == -99.4877  # at most 4 decimals
        await intake(ping("drv_ws_f", -6, lat=27.52))
        assert [m["type"] for m in await messages(communicator)] == ["location"]

        await intake(status("ORD-WS-F", "delivered", -5))
        got = await messages(communicator)
        assert [m["type"] for m in got] == ["status", "eta"] and got[0]["status"] == "delivered"
        await intake(ping("drv_ws_f", -4, lat=27.53))
        assert await messages(communicator) == []
        await communicator.disconnect()

    run(scenario)


def test_a_late_ping_never_reaches_the_page(intake: Any) -> None:
    async def scenario() -> None:
        delivery = await new_delivery(intake, "ORD-WS-L", driver="drv_ws_l", stops_before=1)
        await intake(ping("drv_ws_l", -3, lat=27.6))
        communicator, _ = await open_socket(delivery.tracking_token)
        got = await messages(communicator)
        assert got[-1]["type"] == "location" and got[-1]["lat"] == 27.6
        await intake(ping("drv_ws_l", -5, lat=27.1))  # recorded before the one shown
        assert await messages(communicator) == []
        await communicator.disconnect()

    run(scenario)


def test_one_ping_reaches_every_eligible_viewer_through_one_group_message(
    intake: Any, monkeypatch: Any
) -> None:
    async def scenario() -> None:
        close = [
            await new_delivery(intake, f"ORD-WS-P{n}", driver="drv_ws_p", stops_before=n) for n in range(3)
        ]
        far = await new_delivery(intake, "ORD-WS-P9", driver="drv_ws_p", stops_before=9)
        sockets = [(await open_socket(d.tracking_token))[0] for d in [*close, *close, far]]
        for communicator in sockets:
            await messages(communicator, quiet=0.1)

        layer = get_channel_layer()
        sent: list[str] = []
        original = layer.group_send

        async def counting(group: str, message: dict[str, Any]) -> None:
            sent.append(group)
            await original(group, message)

        monkeypatch.setattr(layer, "group_send", counting)
        await intake(ping("drv_ws_p", -2))
        assert len(sent) == 1 and sent[0].startswith("driver.")
        for communicator in sockets[:-1]:
            assert [m["type"] for m in await messages(communicator, quiet=0.2)] == ["location"]
        assert await messages(sockets[-1], quiet=0.2) == []
        for communicator in sockets:
            await communicator.disconnect()

    run(scenario)


def test_an_oversized_frame_closes_the_socket_with_1009(intake: Any) -> None:
    async def scenario() -> None:
        await intake(upsert_event("ORD-WS-B"))
        delivery = await Delivery.objects.aget(reference="ORD-WS-B")
        communicator, _ = await open_socket(delivery.tracking_token)
        await messages(communicator, quiet=0.1)
        await communicator.send_to(text_data="x" * (1024 * 1024))
        closed = await communicator.receive_output(timeout=1)
        assert closed == {"type": "websocket.close", "code": consumers.CLOSE_TOO_BIG}
        other, connected = await open_socket(delivery.tracking_token)  # the server lives on
        assert connected
        await other.disconnect()

    run(scenario)


def test_a_flood_of_small_frames_closes_the_socket_with_1008_within_a_second(intake: Any) -> None:
    async def scenario() -> None:
        await intake(upsert_event("ORD-WS-Q"))
        delivery = await Delivery.objects.aget(reference="ORD-WS-Q")
        communicator, _ = await open_socket(delivery.tracking_token)
        await messages(communicator, quiet=0.1)
        for _ in range(10):
            await communicator.send_to(bytes_data=b"hi")
        closed = await communicator.receive_output(timeout=1)
        assert closed == {"type": "websocket.close", "code": consumers.CLOSE_POLICY}

    run(scenario)


def test_too_many_sockets_on_one_token_are_refused(intake: Any) -> None:
    async def scenario() -> None:
        await intake(upsert_event("ORD-WS-N"))
        delivery = await Delivery.objects.aget(reference="ORD-WS-N")
        opened = []
        for _ in range(consumers.MAX_SOCKETS_PER_TOKEN):
            communicator, connected = await open_socket(delivery.tracking_token)
            assert connected
            opened.append(communicator)
        _, connected = await open_socket(delivery.tracking_token)
        assert not connected
        await opened.pop().disconnect()
        again, connected = await open_socket(delivery.tracking_token)
        assert connected
        for communicator in [*opened, again]:
            await communicator.disconnect()
        assert delivery.tracking_token not in consumers._open_per_token

    run(scenario)


def test_many_sockets_leaving_at_once_leave_nothing_behind(intake: Any) -> None:
    async def scenario() -> None:
        deliveries = [
            await new_delivery(intake, f"ORD-WS-M{n}", driver="drv_ws_m", stops_before=1) for n in range(5)
        ]
        sockets = []
        for delivery in deliveries:
            for _ in range(10):
                communicator, connected = await open_socket(delivery.tracking_token)
                assert connected
                sockets.append(communicator)
        hub = consumers._hub(get_channel_layer())
        assert sum(len(followers) for followers in hub.followers.values()) == 50
        await asyncio.gather(*(communicator.disconnect() for communicator in sockets))
        assert hub.followers == {}
        assert not any(d.tracking_token in consumers._open_per_token for d in deliveries)

    run(scenario)


def test_a_reissued_link_closes_the_sockets_of_the_old_one_and_keeps_the_new_ones(intake: Any) -> None:
    from django.contrib.auth.models import User

    from tracking.support import tracking_token_reissue

    def reissue(delivery: Delivery) -> str:
        agent = User.objects.get_or_create(username="agent-ws", defaults={"is_staff": True})[0]
        tracking_token_reissue(
            delivery_id=delivery.pk, user=agent, expected_token=delivery.tracking_token, nonce="n" * 20
        )
        return Delivery.objects.get(pk=delivery.pk).tracking_token

    async def scenario() -> None:
        await intake(upsert_event("ORD-WS-REISSUE"))
        delivery = await Delivery.objects.aget(reference="ORD-WS-REISSUE")
        old, _ = await open_socket(delivery.tracking_token)
        await messages(old)
        new_token = await sync_to_async(reissue)(delivery)
        closed = await old.receive_output(timeout=5)
        assert closed == {"type": "websocket.close", "code": consumers.CLOSE_POLICY}
        fresh, connected = await open_socket(new_token)
        assert connected
        await messages(fresh)
        await intake(status("ORD-WS-REISSUE", "out_for_delivery", 1))
        assert "status" in {m["type"] for m in await messages(fresh)}
        await fresh.disconnect()
        gone, connected = await open_socket(delivery.tracking_token)
        assert not connected
        await gone.disconnect()

    run(scenario)
