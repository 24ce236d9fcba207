from __future__ import annotations

import json

import httpx
import pytest
from django.conf import settings

from tests.services import daphne
from tracking import signing

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def test_two_daphne_processes_share_one_idempotency_record(contract_examples):
    body = json.dumps({"events": contract_examples["inbound"][:1]}).encode()
    headers = {
        "Content-Type": "application/json",
        signing.HEADER: signing.sign(secret=settings.PORCHLIGHT_ROUTING_SECRETS[0], body=body),
    }
    with daphne() as one, daphne() as two:
        first = httpx.post(f"{one}/api/v1/events", content=body, headers=headers)
        second = httpx.post(f"{two}/api/v1/events", content=body, headers=headers)
    assert first.json()["results"][0]["result"] == "accepted"
    assert second.json()["results"][0]["result"] == "duplicate"
