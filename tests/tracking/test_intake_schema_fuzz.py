"""W7: schemathesis drives the intake from its own OpenAPI document, with data that fits the
document (positive) and data that breaks it (negative), every request signed for real.

Must show: 0 server errors, and every response (status, content type, body) is one the
document describes. A request that breaks the document gets 400, 413 or 415, or 200 with
per-event results (an invalid event is `rejected`; the contract reads tolerantly, so an
unknown extra field does not make an event invalid). FUZZ_EXAMPLES sets the cases per mode
(2,500 each in the production pass, 5,000 in all; 250 each in the embedded pass, which repeats
the same code on SQLite).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import pytest
import schemathesis
from django.conf import settings as django_settings
from hypothesis import given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fuzz import fuzz_settings, signing_app
from tracking import signing

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

ON_POSTGRES = os.environ.get("DATABASE_URL", "").startswith("postgres")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or (2500 if ON_POSTGRES else 250))
FUZZ_SETTINGS = fuzz_settings(EXAMPLES)


def _sign(path: str, body: bytes) -> dict[str, str]:
    """As the routing backend signs, with the current secret, so that cases reach the parser."""
    secret = django_settings.PORCHLIGHT_ROUTING_SECRETS[0]
    return {"HTTP_" + signing.HEADER.upper().replace("-", "_"): signing.sign(secret=secret, body=body)}


SCHEMA = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", signing_app(_sign))
INTAKE = SCHEMA["/api/v1/events"]["POST"]
# What the document promises of every answer. (Not schemathesis' auth checks: the signer above
# signs every case, so "accepts invalid authentication" would be a finding about the signer.)
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _results(response: Any) -> list[dict[str, Any]]:
    try:
        return json.loads(response.content)["results"]
    except (ValueError, KeyError, TypeError):
        return []


# 2,500 cases take 2-5 minutes, depending on the machine: more than the suite's 300 s default.
@pytest.mark.timeout(900)
def test_documented_requests_get_documented_answers_and_never_a_server_error() -> None:
    seen: Counter[int] = Counter()

    @FUZZ_SETTINGS
    @given(case=INTAKE.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def check(case: Any) -> None:
        response = case.call()
        seen[response.status_code] += 1
        assert response.status_code < 500, response.content[:500]
        # The status, content type and body conform to the document.
        case.validate_response(response, checks=CONFORMANCE)

    check()
    assert sum(seen.values()) >= EXAMPLES * 0.9
    # Most documented requests are taken: a fuzzer that only ever hit errors would prove nothing.
    assert seen[200] >= sum(seen.values()) * 0.5, seen


@pytest.mark.timeout(900)
def test_undocumented_requests_are_refused_cleanly_and_never_a_server_error() -> None:
    seen: Counter[str] = Counter()

    @FUZZ_SETTINGS
    @given(case=INTAKE.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    def check(case: Any) -> None:
        response = case.call()
        assert response.status_code < 500, response.content[:500]
        case.validate_response(response, checks=CONFORMANCE)
        if response.status_code == 200:
            # The envelope was fine; whatever broke the document is in its events.
            results = _results(response)
            seen["200: " + ",".join(sorted({r["result"] for r in results}))] += 1
        else:
            assert response.status_code in (400, 413, 415), response.status_code
            seen[str(response.status_code)] += 1

    check()
    assert sum(seen.values()) >= EXAMPLES * 0.9
    # The cases reach both the envelope's checks and the per-event validation. (Not all of them
    # are refused: the contract reads tolerantly, so an unknown extra field, or a change to a
    # header the signer replaces, still makes a good event.)
    assert seen["400"] >= sum(seen.values()) * 0.1, seen
    assert sum(n for key, n in seen.items() if "rejected" in key) >= sum(seen.values()) * 0.1, seen
