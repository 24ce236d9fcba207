"""ASGI entry points for bench/profile_intake.py only: the product with one part switched off,
to measure what that part costs per request. Never used by the product or by `make bench`.

BENCH_VARIANT, comma-separated: `nolive` (no live publish after commit), `nonotify` (no
notification rows or tasks). Middleware off is a settings module: bench.settings_nomiddleware.
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

__all__ = ["application"]
