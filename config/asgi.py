"""ASGI entry point: HTTP through Django (the intake beside it, tracking/intake_asgi.py),
websockets through Channels, origin-checked."""

from __future__ import annotations

import gc
import os
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# Build the Django app (and so the app registry) before anything imports models; as
# get_asgi_application() does, with the middleware chain run in one thread (config/handler.py).
django.setup(set_prefix=False)

from config.handler import SyncChainASGIHandler  # noqa: E402

django_asgi_app = SyncChainASGIHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from config import wsserver  # noqa: E402
from config.routing import websocket_urlpatterns  # noqa: E402

# Under daphne: inbound frame limits, a bound on each socket's unsent bytes, one-frame fan-out.
wsserver.install(
    max_message_bytes=settings.PORCHLIGHT_WS_MAX_MESSAGE_BYTES,
    send_buffer_bytes=settings.PORCHLIGHT_WS_SEND_BUFFER_BYTES,
)

from tracking import live  # noqa: E402
from tracking.intake_asgi import IntakeApp  # noqa: E402

router = ProtocolTypeRouter(
    {
        # The intake's POSTs are answered on the loop; everything else by Django.
        "http": IntakeApp(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)

# Everything loaded so far lives as long as the process: out of the collector's sight, a full
# collection no longer walks it. Measured: +19% pings in batches, +7-26% single events and
# plain views (bench/profile_intake.py variants, `gc.freeze()`).
gc.freeze()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    # Live pushes made from request threads go out on this loop without holding the request.
    live.remember_server_loop()
    await router(scope, receive, send)
