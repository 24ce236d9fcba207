"""Django's ASGI handler with the middleware chain run the way WSGI runs it: in one thread.

Under ASGI, Django runs each middleware in async mode when it can, and `MiddlewareMixin`'s async
mode sends every `process_request` and `process_response` to a thread and back; a sync-only
middleware in the chain adds a hop to async and back again. Our chain is sync code (ours, django-csp,
WhiteNoise, sessions, CSRF, auth...), so each request crossed between the event loop and its
thread more than a dozen times, which cost more than everything else a small request does
(bench/profile_intake.py variants: 200 bare requests/s with the chain, 480 without it).

Here the whole chain and the view run in one call on the request's thread: one crossing in,
one out. Nothing in the chain awaits anything, so nothing is lost by not being async; an async
view (none today) would run through async_to_sync, as under WSGI.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler


class SyncChainASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        chain = self._middleware_chain  # type: ignore[has-type]
        self._middleware_chain = sync_to_async(chain, thread_sensitive=True)
