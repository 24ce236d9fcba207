"""Who may post to the adapters: Onfleet's HMAC-SHA512 with a hex-decoded key, Spoke's
HMAC-SHA256; any configured secret (rotation); 401 for a missing, wrong or malformed one."""

from __future__ import annotations

import pytest

from tests.integrations.conftest import (
    ONFLEET_SECRETS,
    ONFLEET_URL,
    SPOKE_SECRETS,
    SPOKE_URL,
    onfleet_signature,
    post_onfleet,
    post_spoke,
    raw,
    recorded,
    spoke_signature,
)
from tracking.integrations import onfleet, spoke
from tracking.models import Delivery, ProviderPayload

pytestmark = pytest.mark.django_db

ONFLEET_VECTOR = (
    "542013bd0f97f4b51d7977d33aea6b9ad97585c76d5ad3f3a294ce679560cd3f"
    "846144e5e74da79597c16663830b9720bf7d9bb58c88d2acd989bcc1000027fb"
)


def test_the_onfleet_test_vector_matches():
    assert onfleet.signature_matches(
        header=ONFLEET_VECTOR, body=b"some-body", secrets=["736f6d652d736563726574"]
    )


def test_the_onfleet_test_vector_is_keyed_with_the_hex_decoded_secret_not_its_text():
    # Keyed with the 22 characters of the hex string instead, the digest differs.
    assert not onfleet.signature_matches(
        header=ONFLEET_VECTOR, body=b"some-body", secrets=[b"736f6d652d736563726574".hex()]
    )
    assert not onfleet.signature_matches(
        header=ONFLEET_VECTOR, body=b"some-body!", secrets=["736f6d652d736563726574"]
    )


def test_an_onfleet_signature_in_upper_case_hex_matches():
    assert onfleet.signature_matches(
        header=ONFLEET_VECTOR.upper(), body=b"some-body", secrets=["736f6d652d736563726574"]
    )


def test_a_secret_that_is_not_hex_is_never_used_as_a_key():
    import hashlib
    import hmac

    text_keyed = hmac.new(b"not-hex", b"body", hashlib.sha512).hexdigest()
    assert not onfleet.signature_matches(header=text_keyed, body=b"body", secrets=["not-hex", ""])


def test_a_spoke_signature_is_hmac_sha256_of_the_raw_body():
    signature = spoke_signature(b'{"a": 1}')
    assert spoke.signature_matches(header=signature, body=b'{"a": 1}', secrets=SPOKE_SECRETS)
    assert not spoke.signature_matches(header=signature, body=b'{"a":1}', secrets=SPOKE_SECRETS)


def test_an_empty_spoke_secret_never_authenticates():
    import hashlib
    import hmac

    empty_keyed = hmac.new(b"", b"body", hashlib.sha256).hexdigest()
    assert not spoke.signature_matches(header=empty_keyed, body=b"body", secrets=["", " "])


@pytest.mark.parametrize("secret", ONFLEET_SECRETS)
def test_onfleet_accepts_each_configured_secret_during_a_rotation(client, secret):
    response = post_onfleet(client, recorded("onfleet", "task_created"), secret=secret)
    assert response.status_code == 200
    assert Delivery.objects.count() == 1


@pytest.mark.parametrize("secret", SPOKE_SECRETS)
def test_spoke_accepts_each_configured_secret_during_a_rotation(client, secret):
    response = post_spoke(client, recorded("spoke", "stop_allocated"), secret=secret)
    assert response.status_code == 200
    assert Delivery.objects.count() == 1


def _post(client, url, header, value, body):
    return client.post(
        url, data=body, content_type="application/json", headers={header: value} if value else {}
    )


ONFLEET_BODY = raw(recorded("onfleet", "task_created"))
SPOKE_BODY = raw(recorded("spoke", "stop_allocated"))
CASES = [
    (ONFLEET_URL, "X-Onfleet-Signature", ONFLEET_BODY, onfleet_signature(ONFLEET_BODY, "00ff00ff")),
    (SPOKE_URL, "spoke-signature", SPOKE_BODY, spoke_signature(SPOKE_BODY, "another-team")),
]


@pytest.mark.parametrize(("url", "header", "body", "wrong"), CASES)
def test_a_missing_signature_is_401_and_nothing_is_kept(client, url, header, body, wrong):
    response = _post(client, url, header, None, body)
    assert response.status_code == 401
    assert response.json()["error"] == "missing_signature"
    assert not ProviderPayload.objects.exists() and not Delivery.objects.exists()


@pytest.mark.parametrize(("url", "header", "body", "wrong"), CASES)
def test_a_signature_from_another_secret_is_401(client, url, header, body, wrong):
    response = _post(client, url, header, wrong, body)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_signature"
    assert not ProviderPayload.objects.exists()


@pytest.mark.parametrize(("url", "header", "body", "wrong"), CASES)
@pytest.mark.parametrize("value", ["not-hex-at-all", "abc", "zz" * 64, "a" * 5000, "sha256=" + "0" * 64])
def test_a_malformed_signature_is_401_never_500(client, url, header, body, wrong, value):
    response = _post(client, url, header, value, body)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_signature"


@pytest.mark.parametrize(("url", "header", "body", "wrong"), CASES)
def test_a_valid_signature_over_another_body_is_401(client, url, header, body, wrong):
    sign = onfleet_signature if "onfleet" in url else spoke_signature
    response = _post(client, url, header, sign(body), body + b" ")
    assert response.status_code == 401


def test_with_no_secret_configured_every_post_is_refused(client, settings):
    settings.ONFLEET_WEBHOOK_SECRETS = []
    settings.SPOKE_WEBHOOK_SECRETS = []
    assert post_onfleet(client, recorded("onfleet", "task_created")).status_code == 401
    assert post_spoke(client, recorded("spoke", "stop_allocated")).status_code == 401
