"""Recorded Onfleet and Spoke payloads, signed in the tests with the providers' real algorithms."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

PAYLOADS = Path(__file__).resolve().parent / "payloads"
ONFLEET_URL = "/api/v1/integrations/onfleet/"
SPOKE_URL = "/api/v1/integrations/spoke/"
# Onfleet shows its webhook secret as hex; two, as during a rotation.
ONFLEET_SECRETS = ["736f6d652d736563726574", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"]
SPOKE_SECRETS = ["7fd4eb15359c04280311116c6c597041", "a1b2c3d4e5f60718293a4b5c6d7e8f90"]


def recorded(provider: str, name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / provider / f"{name}.json").read_text())


def raw(body: bytes | str | dict[str, Any]) -> bytes:
    if isinstance(body, dict | list):
        return json.dumps(body).encode()
    return body.encode() if isinstance(body, str) else body


def onfleet_signature(body: bytes, secret: str = ONFLEET_SECRETS[0]) -> str:
    return hmac.new(binascii.a2b_hex(secret), body, hashlib.sha512).hexdigest()


def spoke_signature(body: bytes, secret: str = SPOKE_SECRETS[0]) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post_onfleet(client: Client, body: Any, *, secret: str = ONFLEET_SECRETS[0], **kwargs: Any) -> Any:
    data = raw(body)
    headers = {"X-Onfleet-Signature": onfleet_signature(data, secret)} | kwargs.pop("headers", {})
    return client.post(ONFLEET_URL, data=data, content_type=kwargs.pop("content_type", "application/json"),
                       headers=headers, **kwargs)  # fmt: skip


def post_spoke(client: Client, body: Any, *, secret: str = SPOKE_SECRETS[0], **kwargs: Any) -> Any:
    data = raw(body)
    headers = {"spoke-signature": spoke_signature(data, secret)} | kwargs.pop("headers", {})
    return client.post(SPOKE_URL, data=data, content_type=kwargs.pop("content_type", "application/json"),
                       headers=headers, **kwargs)  # fmt: skip


@pytest.fixture(autouse=True)
def _webhook_secrets(settings: Any) -> None:
    settings.ONFLEET_WEBHOOK_SECRETS = list(ONFLEET_SECRETS)
    settings.SPOKE_WEBHOOK_SECRETS = list(SPOKE_SECRETS)
    settings.ONFLEET_PHOTO_URL_TEMPLATE = ""
    settings.INTEGRATIONS_TIMEZONE = "UTC"
