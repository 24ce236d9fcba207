"""W7 for the adapters: schemathesis drives both doors from the OpenAPI document, with bodies
that fit it (positive) and bodies that break it (negative), every one signed with the
provider's real algorithm. Must show: 0 server errors, every answer one the document describes."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fuzz import fuzz_settings, signing_app
from tests.integrations.conftest import ONFLEET_URL, SPOKE_URL, onfleet_signature, spoke_signature

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 150)
FUZZ_SETTINGS = fuzz_settings(EXAMPLES)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
SIGNERS = {
    ONFLEET_URL: ("HTTP_X_ONFLEET_SIGNATURE", onfleet_signature),
    SPOKE_URL: ("HTTP_SPOKE_SIGNATURE", spoke_signature),
}


def _sign(path: str, body: bytes) -> dict[str, str]:
    """The provider's real signature, so that cases reach the mapping."""
    if signer := SIGNERS.get(path):
        return {signer[0]: signer[1](body)}
    return {}


SCHEMA = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", signing_app(_sign))
OPERATIONS = [(ONFLEET_URL, "POST"), (SPOKE_URL, "POST"), (ONFLEET_URL, "GET")]


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_generated_request_gets_a_documented_answer_and_never_a_server_error(path, method, mode):
    seen: Counter[int] = Counter()

    @FUZZ_SETTINGS
    @given(case=SCHEMA[path][method].as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call()
        seen[response.status_code] += 1
        assert response.status_code < 500, response.content[:500]
        case.validate_response(response, checks=CHECKS)

    check()
    assert sum(seen.values()) >= EXAMPLES * 0.9
    if mode == GenerationMode.POSITIVE:
        # Bodies that fit the document are authentic envelopes: most are answered 200.
        assert seen[200] >= sum(seen.values()) * 0.5, seen
