"""What the schemathesis tests share: Django's WSGI app behind a signer, so that generated
cases reach the parser instead of stopping at 401, and Hypothesis settings for long runs."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def fuzz_settings(examples: int) -> Any:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )


def signing_app(sign: Callable[[str, bytes], dict[str, str]]) -> WsgiApp:
    """Django's WSGI app; `sign(path, body)` gives the WSGI environ entries (signature headers)
    added to each request, whatever body the case carries."""
    # One handler while the middleware setting stays the same: building one loads every
    # middleware, and WhiteNoise's scans the static files: 500 cases of each W7 test took 59 s
    # with a handler per request, 36 s with this.
    handlers: dict[tuple[str, ...], WsgiApp] = {}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        environ.update(sign(environ["PATH_INFO"], body))
        # As Django's test client does: the test's transaction holds the connection, so the
        # request must not close it (production settings close connections after each request).
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            key = tuple(django_settings.MIDDLEWARE)
            handler = handlers.get(key)
            if handler is None:
                handler = handlers[key] = get_wsgi_application()
            return list(handler(environ, start_response))
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)

    return app
