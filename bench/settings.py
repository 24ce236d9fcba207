"""Settings of the servers benchmarks start: the product's, with a bench-only URLconf."""

from __future__ import annotations

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
