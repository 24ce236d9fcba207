"""bench.settings with no middleware: what Django's sync middleware costs under ASGI
(each one is a thread hop there). For bench/profile_intake.py only."""

from __future__ import annotations

from bench.settings import *  # noqa: F403

MIDDLEWARE: list[str] = []
