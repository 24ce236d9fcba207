"""The `Porchlight-Signature` header: parsing, verification, and W2's rejection matrix."""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from django.conf import settings

from tests.tracking.intake_events import status, upserted
from tracking import signing
from tracking.models import Delivery, Driver, InboundEvent, OutboundEvent

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-one"
BODY = b'{"id":"evt_1"}'


def header_for(body: bytes, *, secret: str = SECRET, timestamp: int | None = None) -> str:
    return signing.sign(secret=secret, body=body, timestamp=timestamp)


# --- parse and verify (unit) --------------------------------------------------------------


def test_a_header_parses_into_its_timestamp_and_every_v1_signature():
    parsed = signing.parse(f"t=1700000000,v1={'a' * 64}, v1={'b' * 64},v0=ignored")
    assert parsed == signing.ParsedSignature(timestamp=1700000000, signatures=("a" * 64, "b" * 64))


def test_the_signature_is_hmac_sha256_over_the_timestamp_a_dot_and_the_raw_body():
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert signing.sign(secret=SECRET, body=BODY, timestamp=1700000000) == f"t=1700000000,v1={expected}"


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_signature"),
        ("", "missing_signature"),
        ("v1=" + "a" * 64, "invalid_signature"),  # no t
        ("t=1700000000", "invalid_signature"),  # no v1
        ("t=1700000000,v1=" + "A" * 64, "invalid_signature"),  # uppercase hex
        ("t=1700000000,v1=" + "a" * 40, "invalid_signature"),  # SHA-1 length
        ("t=1700000000,v1=" + "g" * 64, "invalid_signature"),
        ("t=abc,v1=" + "a" * 64, "invalid_signature"),
        ("t=-5,v1=" + "a" * 64, "invalid_signature"),
        ("t=\uff11\uff17,v1=" + "a" * 64, "invalid_signature"),  # full-width digits
        ("t=1,t=2,v1=" + "a" * 64, "invalid_signature"),
        ("t=1700000000;v1=" + "a" * 64, "invalid_signature"),
        ("garbage", "invalid_signature"),
        ("t=1700000000," + ",".join(["v1=" + "a" * 64] * 20), "invalid_signature"),
        ("t=1700000000,v1=" + "a" * 64 + ",x=" + "y" * 5000, "invalid_signature"),  # too long
    ],
)
def test_a_malformed_header_is_refused_with_its_code(header, code):
    with pytest.raises(signing.SignatureError) as raised:
        signing.parse(header)
    assert raised.value.code == code


def test_any_one_matching_signature_of_any_configured_secret_is_enough():
    now = int(time.time())
    good = header_for(BODY, secret="new", timestamp=now).split("v1=")[1]
    header = f"t={now},v1={'0' * 64},v1={good}"
    signing.verify(header=header, body=BODY, secrets=["old", "new"], tolerance=300)


def test_a_signature_by_no_configured_secret_is_invalid():
    with pytest.raises(signing.SignatureError) as raised:
        signing.verify(
            header=header_for(BODY, secret="other"), body=BODY, secrets=["old", "new"], tolerance=300
        )
    assert raised.value.code == "invalid_signature"


def test_an_empty_secret_in_the_setting_never_verifies_anything():
    header = header_for(BODY, secret="")
    with pytest.raises(signing.SignatureError):
        signing.verify(header=header, body=BODY, secrets=["", "real"], tolerance=300)


@pytest.mark.parametrize(
    ("offset", "ok"), [(-301, False), (-300, True), (0, True), (300, True), (301, False)]
)
def test_the_timestamp_may_be_at_most_300_s_away_from_the_clock(offset, ok):
    now = 1_800_000_000
    header = header_for(BODY, timestamp=now + offset)
    if ok:
        signing.verify(header=header, body=BODY, secrets=[SECRET], tolerance=300, now=now)
    else:
        with pytest.raises(signing.SignatureError) as raised:
            signing.verify(header=header, body=BODY, secrets=[SECRET], tolerance=300, now=now)
        assert raised.value.code == "stale_signature"


# --- W2 test_signature_rejection_matrix (through the endpoint) -----------------------------


def _w2_variants(now: int) -> dict[str, tuple[bytes, dict[str, str]]]:
    body = json.dumps(
        {"events": [upserted("ORD-W2", id="evt_w2_1"), status("ORD-W2", id="evt_w2_2")]}
    ).encode()
    secret = settings.PORCHLIGHT_ROUTING_SECRETS[0]
    other_sender = settings.PORCHLIGHT_OUTBOUND_SECRET or "outbound"
    decoys = [f"v1={'0' * 63}{i % 10}" for i in range(19)]
    good = signing.compute(secret=secret, timestamp=now, body=body)
    reserialised = json.dumps(json.loads(body), indent=1).encode()
    sha1 = hmac.new(secret.encode(), f"{now}.".encode() + body, hashlib.sha1).hexdigest()

    def sig(value: str) -> dict[str, str]:
        return {signing.HEADER: value}

    return {
        "missing header": (body, {}),
        "wrong secret": (body, sig(header_for(body, secret="not-our-secret", timestamp=now))),
        "body changed by one byte": (body.replace(b"ORD-W2", b"ORD-W3"), sig(f"t={now},v1={good}")),
        "re-serialised JSON": (reserialised, sig(f"t={now},v1={good}")),
        "t 301 s in the past": (body, sig(header_for(body, secret=secret, timestamp=now - 301))),
        "t 301 s in the future": (body, sig(header_for(body, secret=secret, timestamp=now + 301))),
        "non-hex signature": (body, sig(f"t={now},v1={'z' * 64}")),
        "20 signatures": (body, sig(f"t={now}," + ",".join([*decoys, f"v1={good}"]))),
        "empty body": (b"", sig(f"t={now},v1={good}")),
        "signature of another sender": (body, sig(header_for(body, secret=other_sender, timestamp=now))),
        "SHA-1 instead of SHA-256": (body, sig(f"t={now},v1={sha1}")),
        "t not a number": (body, sig(f"t=now,v1={good}")),
    }  # fmt: skip


W2_NAMES = [
    "missing header", "wrong secret", "body changed by one byte", "re-serialised JSON",
    "t 301 s in the past", "t 301 s in the future", "non-hex signature", "20 signatures", "empty body",
    "signature of another sender", "SHA-1 instead of SHA-256", "t not a number",
]  # fmt: skip


@pytest.mark.django_db
def test_signature_rejection_matrix_rejects_12_of_12_with_no_rows_and_no_tasks(
    client, django_capture_on_commit_callbacks, monkeypatch
):
    # The server's clock stands still, so that "301 s ahead" cannot drift to 300 s on a slow run.
    now = int(time.time())
    monkeypatch.setattr(signing.time, "time", lambda: float(now))
    variants = _w2_variants(now)
    assert sorted(variants) == sorted(W2_NAMES)
    statuses = {}
    with django_capture_on_commit_callbacks() as callbacks:
        for name, (body, headers) in variants.items():
            # CONTENT_TYPE given again: the test client drops it for an empty body.
            response = client.post(
                "/api/v1/events",
                data=body,
                content_type="application/json",
                headers=headers,
                CONTENT_TYPE="application/json",
            )
            statuses[name] = response.status_code
            assert response.json()["error"] in (
                "missing_signature",
                "invalid_signature",
                "stale_signature",
            ), name
    assert statuses == dict.fromkeys(W2_NAMES, 401)
    assert InboundEvent.objects.count() == Delivery.objects.count() == Driver.objects.count() == 0
    assert OutboundEvent.objects.count() == 0
    assert callbacks == []  # nothing queued for after the commit: no task, no push


def test_the_20_signature_variant_really_carries_the_right_signature():
    """Else the matrix would pass for the wrong reason."""
    body, headers = _w2_variants(int(time.time()))["20 signatures"]
    parsed_good = headers[signing.HEADER].split("v1=")[-1]
    timestamp = int(headers[signing.HEADER].split(",")[0][2:])
    assert parsed_good == signing.compute(
        secret=settings.PORCHLIGHT_ROUTING_SECRETS[0], timestamp=timestamp, body=body
    )


# --- static check: signatures are compared only with hmac.compare_digest --------------------

SIGNATURE_WORDS = ("signature", "digest", "hmac", "mac", "sig")


def _names_in(node: ast.AST) -> set[str]:
    names = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            names.add(child.id.lower())
        elif isinstance(child, ast.Attribute):
            names.add(child.attr.lower())
    return names


def _looks_like_a_signature(name: str) -> bool:
    parts = name.replace("-", "_").split("_")
    return any(word in parts or name.endswith(word) for word in SIGNATURE_WORDS)


def signature_comparisons(source: str) -> list[int]:
    """Line numbers of `==`/`!=` comparisons whose operands name a signature, digest or MAC."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            operands = [node.left, *node.comparators]
            if any(_looks_like_a_signature(name) for operand in operands for name in _names_in(operand)):
                lines.append(node.lineno)
    return lines


def test_the_static_check_would_find_a_signature_compared_with_equals():
    assert signature_comparisons("ok = expected_signature == given\n") == [1]
    assert signature_comparisons("ok = hmac.new(k, m, 'sha256').hexdigest() != v\n") == [1]
    assert signature_comparisons("ok = hmac.compare_digest(expected, given)\n") == []


def test_no_code_compares_signatures_with_equals_only_with_compare_digest():
    skip = {".venv", "tests", "migrations", "node_modules", "var", "staticfiles"}
    offenders = []
    checked = 0
    for path in ROOT.rglob("*.py"):
        if skip & set(path.relative_to(ROOT).parts):
            continue
        checked += 1
        offenders += [f"{path.relative_to(ROOT)}:{line}" for line in signature_comparisons(path.read_text())]
    assert checked > 10
    assert offenders == []
    assert "hmac.compare_digest" in (ROOT / "tracking" / "signing.py").read_text()
