"""The project's Celery app plus a raw task for control runs: an event POSTed to the routing
backend straight from a Celery task with Celery's default retry policy (3 retries), no outbox.
What `requests.post` in a task with `self.retry` does, as most projects write it."""

from __future__ import annotations

from typing import Any

import requests

from config.celery import app


@app.task(bind=True, name="chaos.raw_outbound_post")
def raw_outbound_post(self: Any, url: str, body: str) -> None:
    try:
        requests.post(
            url, data=body, headers={"Content-Type": "application/json"}, timeout=2
        ).raise_for_status()
    except requests.RequestException as error:
        raise self.retry(exc=error, countdown=1) from error  # max_retries: Celery's default, 3
