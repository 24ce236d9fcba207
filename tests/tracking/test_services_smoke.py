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


def test_daphne_hands_a_form_post_to_the_application_unparsed():
    # Twisted parses the body of a form POST itself (into request.args, which daphne never
    # reads) and answers a broken multipart body with its own bare 400; config/wsserver.py
    # turns that off, so the intake says what is wrong, as it does for any other type.
    headers = {"Content-Type": "multipart/form-data"}  # no boundary: not a multipart at all
    with daphne() as url:
        broken = httpx.post(f"{url}/api/v1/events", content=b"--x\r\nnot a part", headers=headers)
        form = httpx.post(
            f"{url}/api/v1/events",
            content=b"a=1&b=2",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    for response in (broken, form):
        assert response.status_code == 415
        assert response.json()["error"] == "unsupported_media_type"
        assert response.headers["X-Request-ID"]
