"""Publishing after commit off the request path (tracking.background): a stalled broker costs
the intake nothing, and what was published late still goes out."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pytest

from notifications import tasks as notification_tasks
from notifications.models import Notification
from tests.services import wait_for
from tests.tracking.intake_events import status, upserted
from tracking import background

pytestmark = pytest.mark.django_db


@pytest.fixture
def with_broker(settings: Any) -> None:
    """Production's setting (a broker, publishes in the background); `.delay` is patched in
    each test, so nothing reaches a real broker."""
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.PORCHLIGHT_PUBLISH_IN_BACKGROUND = True
    settings.NOTIFY_QUIET_HOURS = ""  # messages due now, whatever the hour of the run


def test_a_stalled_broker_does_not_hold_the_intake_and_the_publish_happens_once_it_answers(
    with_broker: None,
    post_events: Any,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    broker_answers = threading.Event()
    published: list[list[int]] = []

    def stalled_delay(ids: list[int]) -> None:
        broker_answers.wait(10)
        published.append(ids)

    monkeypatch.setattr(notification_tasks.notification_send, "delay", stalled_delay)
    broker_answers.set()  # the broker is fine while the delivery arrives
    with django_capture_on_commit_callbacks(execute=True):
        post_events(upserted("ORD-BG"))
    assert background.wait_idle()
    published.clear()
    broker_answers.clear()  # and stalls from here

    started = time.monotonic()
    with django_capture_on_commit_callbacks(execute=True):
        response = post_events(status("ORD-BG", "out_for_delivery", minutes=1))
    answered_in = time.monotonic() - started

    assert response.status_code == 200
    # Answered while the broker still holds the publish (it would hold it for 10 s).
    assert published == []
    assert answered_in < 5, f"the request waited {answered_in:.1f} s"
    broker_answers.set()
    assert background.wait_idle()
    queued = set(
        Notification.objects.filter(delivery__reference="ORD-BG", kind="out_for_delivery").values_list(
            "pk", flat=True
        )
    )
    assert queued and [set(ids) for ids in published] == [queued]


def test_without_a_broker_the_publish_runs_at_once(settings: Any) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = True
    ran: list[str] = []
    background.run_soon(lambda: ran.append(threading.current_thread().name))
    assert ran == [threading.current_thread().name]


def test_a_failing_publish_is_logged_and_the_next_one_still_runs(with_broker: None, caplog: Any) -> None:
    ran: list[int] = []

    def broken() -> None:
        raise ConnectionError("broker refused")

    background.run_soon(broken)
    background.run_soon(lambda: ran.append(1))
    assert background.wait_idle()
    assert ran == [1]
    assert "background publish failed" in caplog.text


def test_a_full_queue_drops_the_hint_with_a_warning_instead_of_blocking(
    with_broker: None, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setattr(background, "_calls", queue.Queue(1))
    monkeypatch.setattr(background, "_thread", None)
    gate = threading.Event()
    background.run_soon(lambda: gate.wait(10))  # taken by the thread, which now waits
    wait_for(background._calls.empty, timeout=5, what="the thread to take the first call")
    background.run_soon(lambda: None)  # fills the queue of one
    started = time.monotonic()
    background.run_soon(lambda: None)  # dropped, at once
    assert time.monotonic() - started < 0.5
    assert "left to the sweepers" in caplog.text
    gate.set()
    assert background.wait_idle()


def test_a_live_push_from_a_request_thread_is_handed_to_the_server_loop_without_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As under daphne: the server's loop runs in one thread, a request in another. A push whose
    channel layer stalls must not hold the request; it goes out once the layer answers."""
    import asyncio

    from tracking import live

    loop = asyncio.new_event_loop()
    server = threading.Thread(target=loop.run_forever, daemon=True)
    server.start()
    layer_answers = threading.Event()
    sent: list[list[str]] = []

    async def stalled_send_all(sends: list[tuple[str, dict[str, Any]]]) -> None:
        await asyncio.get_running_loop().run_in_executor(None, layer_answers.wait, 10)
        sent.append([group for group, _ in sends])

    monkeypatch.setattr(live, "_send_all", stalled_send_all)
    monkeypatch.setattr(live, "_server_loop", loop)
    try:
        started = time.monotonic()
        live._send_safely(lambda: [("delivery.1", {"type": "status"})], lambda: [("driver.2", {})])
        assert time.monotonic() - started < 0.5
        assert sent == []
        layer_answers.set()
        wait_for(lambda: len(sent) == 2, timeout=5, what="both sends")
        assert sent == [["delivery.1"], ["driver.2"]]  # a batch's changes before its positions
    finally:
        loop.call_soon_threadsafe(loop.stop)
        server.join(5)
        loop.close()


def test_without_a_server_loop_live_pushes_go_to_one_loop_of_the_process_without_waiting(
    with_broker: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under gunicorn or in a Celery worker: no daphne loop, yet a push must neither hold the
    caller nor start a new event loop (and new Redis connections) each time."""
    from tracking import live

    monkeypatch.setattr(live, "_server_loop", None)
    layer_answers = threading.Event()
    loops: list[Any] = []

    async def stalled_send_all(sends: list[tuple[str, dict[str, Any]]]) -> None:
        import asyncio

        loops.append(asyncio.get_running_loop())
        await asyncio.get_running_loop().run_in_executor(None, layer_answers.wait, 10)

    monkeypatch.setattr(live, "_send_all", stalled_send_all)
    started = time.monotonic()
    live._send_safely(lambda: [("delivery.1", {"type": "status"})])
    live._send_safely(lambda: [("delivery.2", {"type": "status"})])
    assert time.monotonic() - started < 0.5
    wait_for(lambda: len(loops) == 2, timeout=5, what="both pushes on a loop")
    assert loops[0] is loops[1] is background.event_loop()
    layer_answers.set()
