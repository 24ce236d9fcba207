"""config/handler.py: the ASGI app runs the middleware chain and the view in one thread, once."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import SyncToAsync, async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.core.handlers.asgi import ASGIHandler

from config.asgi import application, django_asgi_app
from config.handler import SyncChainASGIHandler


def scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def get(app: Any, path: str) -> tuple[int, list[dict[str, Any]]]:
    communicator = ApplicationCommunicator(app, scope(path))
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(10)
    messages = [start]
    while messages[-1].get("more_body", start is messages[-1]):
        messages.append(await communicator.receive_output(10))
    await communicator.wait(10)
    return start["status"], messages


def count_thread_crossings(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    crossings: list[object] = []
    original = SyncToAsync.__call__

    async def counted(self: SyncToAsync[Any, Any], *args: Any, **kwargs: Any) -> Any:
        crossings.append(self.func)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)
    return crossings


def test_the_product_serves_http_with_the_one_thread_handler() -> None:
    assert isinstance(django_asgi_app, SyncChainASGIHandler)


@pytest.mark.django_db(transaction=True)
def test_a_request_crosses_from_the_event_loop_to_a_thread_only_a_few_times(monkeypatch):
    crossings = count_thread_crossings(monkeypatch)
    status, messages = async_to_sync(get)(application, "/healthz")
    ours = len(crossings)

    assert status == 200
    assert b"".join(m.get("body", b"") for m in messages[1:])
    # The chain and the view in one crossing; Django's request_started/finished signals and
    # closing the response may add a few. Django's own handler crosses once or twice for each
    # middleware (measured below), which cost more than all the rest of a small request.
    assert ours <= 4, crossings

    crossings.clear()
    status, _ = async_to_sync(get)(ASGIHandler(), "/healthz")
    assert status == 200
    assert len(crossings) >= ours + 8, f"Django's handler crossed {len(crossings)} times, ours {ours}"
