"""ASGI entry points for bench/profile_intake.py only: the product with one part switched off,
to measure what that part costs per request. Never used by the product or by `make bench`.

BENCH_VARIANT, comma-separated: `nolive` (no live publish after commit), `nonotify` (no
notification rows or tasks), `alone` (no group commit: each request its own transaction),
`stockhandler` (Django's ASGIHandler instead of config/handler.py's one-thread chain),
`nogcfreeze` (the start-up objects left to the garbage collector), `djangointake` (the intake
through Django's request cycle and middleware instead of tracking/intake_asgi.py).
Middleware off is a settings module: bench.settings_nomiddleware.
"""

from __future__ import annotations

import os
from typing import Any

from config.asgi import application

VARIANT = set(filter(None, os.environ.get("BENCH_VARIANT", "").split(",")))

if "nolive" in VARIANT:
    import tracking.live

    def _no_publish(build: Any) -> None:
        return None

    tracking.live._send_safely = _no_publish  # type: ignore[attr-defined]

if "nonotify" in VARIANT:
    import tracking.services

    def _no_notifications(*, changes: Any) -> None:
        return None

    tracking.services.notifications_for_changes = _no_notifications  # type: ignore[assignment]

if "alone" in VARIANT:
    import tracking.services

    def _alone(events: Any) -> Any:
        return tracking.services.events_ingest(raw_events=events)

    tracking.services._together.submit = _alone  # type: ignore[method-assign]

if "nogcfreeze" in VARIANT:
    import gc

    # config/asgi.py froze what it loaded: the collector walks it again, as before.
    gc.unfreeze()

if "stockhandler" in VARIANT:
    from channels.routing import ProtocolTypeRouter
    from django.core.handlers.asgi import ASGIHandler

    import config.asgi

    # Django's own handler: each middleware in async mode where it can be (config/handler.py).
    config.asgi.router = ProtocolTypeRouter(
        {"http": ASGIHandler(), "websocket": config.asgi.router.application_mapping["websocket"]}
    )

if "djangointake" in VARIANT:
    from channels.routing import ProtocolTypeRouter

    import config.asgi

    # The intake through Django's request cycle, as before tracking/intake_asgi.py.
    config.asgi.router = ProtocolTypeRouter(
        {
            "http": config.asgi.django_asgi_app,
            "websocket": config.asgi.router.application_mapping["websocket"],
        }
    )

__all__ = ["application"]
