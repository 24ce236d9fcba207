"""The adapters' answers agree with what tracking/openapi.json says of them."""

from __future__ import annotations

import pytest

from tests.integrations.conftest import ONFLEET_URL, SPOKE_URL, post_onfleet, post_spoke, recorded
from tests.tracking.test_openapi import DOCUMENT, validator

pytestmark = pytest.mark.django_db

RECEIPT, ERROR400, ERROR401 = (
    validator("IntegrationReceipt"), validator("IntegrationError400"), validator("IntegrationError401")
)  # fmt: skip


def test_both_doors_are_documented_with_their_signature_headers():
    assert {"get", "post"} <= set(DOCUMENT["paths"][ONFLEET_URL])
    assert "post" in DOCUMENT["paths"][SPOKE_URL]
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert (schemes["OnfleetSignature"]["name"], schemes["SpokeSignature"]["name"]) == (
        "X-Onfleet-Signature", "spoke-signature",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("post", "provider", "name"),
    [
        (post_onfleet, "onfleet", "task_created"),
        (post_onfleet, "onfleet", "worker_duty"),
        (post_spoke, "spoke", "stop_attempted_delivery"),
        (post_spoke, "spoke", "test_send_event"),
    ],
)
def test_answers_match_their_schemas(client, post, provider, name):
    body = recorded(provider, name)
    RECEIPT.validate(post(client, body).json())
    RECEIPT.validate(post(client, body).json())  # received again
    ERROR401.validate(post(client, body, secret="00").json())
    ERROR400.validate(post(client, b"{").json())
    ERROR400.validate(post(client, b"[]").json())
