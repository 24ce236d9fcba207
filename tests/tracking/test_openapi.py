"""The OpenAPI 3.1 document of the intake: valid, served, and in agreement with the code and
the contract's examples."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import signed_post
from tests.tracking.intake_events import upserted
from tests.tracking.test_intake_properties import FIXTURE_SETTINGS, SCALE, mutated_events
from tracking import signing

DOCUMENT_PATH = Path(__file__).resolve().parents[2] / "tracking" / "openapi.json"
DOCUMENT = json.loads(DOCUMENT_PATH.read_text())
URI = "urn:porchlight:openapi"
REGISTRY = Registry().with_resource(URI, Resource.from_contents(DOCUMENT, default_specification=DRAFT202012))


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": f"{URI}#/components/schemas/{name}"},
        registry=REGISTRY,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


EVENT, REQUEST, RESULTS = validator("Event"), validator("Request"), validator("Results")
ERRORS = {status: validator(f"Error{status}") for status in (400, 401, 413, 415)}


def test_the_document_is_valid_openapi_3_1():
    validate_spec(DOCUMENT)
    assert DOCUMENT["openapi"].startswith("3.1")


def test_the_document_describes_both_endpoints_and_every_response_of_the_contract():
    events = DOCUMENT["paths"]["/api/v1/events"]["post"]
    assert set(events["responses"]) == {"200", "400", "401", "413", "415"}
    assert DOCUMENT["components"]["securitySchemes"]["PorchlightSignature"]["name"] == signing.HEADER
    assert "get" in DOCUMENT["paths"]["/api/v1/openapi.json"]
    variants = {s["$ref"].rsplit("/", 1)[1] for s in DOCUMENT["components"]["schemas"]["Event"]["oneOf"]}
    types = {DOCUMENT["components"]["schemas"][v]["properties"]["type"]["const"] for v in variants}
    assert types == {
        "delivery.upserted",
        "delivery.status",
        "delivery.eta",
        "driver.location",
        "delivery.proof",
    }


@pytest.mark.django_db
def test_the_document_is_served_as_json(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert json.loads(b"".join(response.streaming_content)) == DOCUMENT


def test_the_document_embeds_the_contract_examples_unchanged(contract_examples):
    embedded = DOCUMENT["paths"]["/api/v1/events"]["post"]["requestBody"]["content"]["application/json"][
        "examples"
    ]
    assert [embedded[e["id"]]["value"] for e in contract_examples["inbound"]] == contract_examples["inbound"]
    assert embedded["batch"]["value"] == {"events": contract_examples["inbound"]}


def test_every_inbound_example_validates_against_the_document(contract_examples):
    for example in contract_examples["inbound"]:
        assert not list(EVENT.iter_errors(example)), example["id"]
        assert REQUEST.is_valid(example)
    assert REQUEST.is_valid({"events": contract_examples["inbound"]})


@pytest.mark.django_db
def test_every_inbound_example_is_accepted_by_the_code_and_its_response_matches_the_document(
    client, contract_examples
):
    for example in contract_examples["inbound"]:
        response = signed_post(client, example)
        assert response.status_code == 200
        assert not list(RESULTS.iter_errors(response.json()))
        [result] = response.json()["results"]
        expected = "pending" if example["data"].get("reference") == "ORD-10045" else "accepted"
        assert result["result"] == expected, (example["id"], result)


INVALID_EVENTS = {
    "no offset": {"occurred_at": "2026-11-21T07:55:00"},
    "bad id": {"id": "evt 1"},
    "unknown type": {"type": "delivery.teleported"},
    "lat out of range": {"data.address.lat": 91},
    "no contact": {"data.customer": {"name": "Ana"}},
    "country not alpha-2": {"data.address.country": "USA"},
    "items negative": {"data.items": -1},
    "name too long": {"data.customer.name": "x" * 201},
    "photo not a data URL": {"type": "delivery.proof", "data": {"reference": "R", "photo": "https://x/y.png"}},
    "status unknown": {"type": "delivery.status", "data": {"reference": "R", "status": "lost"}},
    "ping lon out of range": {"type": "driver.location",
                              "data": {"driver_id": "d", "lat": 0, "lon": 181,
                                       "recorded_at": "2026-11-21T07:55:00Z"}},
}  # fmt: skip


def _invalid(changes: dict[str, Any]) -> dict[str, Any]:
    item = upserted("ORD-INVALID")
    for path, value in changes.items():
        *parents, last = path.split(".")
        target = item
        for key in parents:
            target = target[key]
        target[last] = copy.deepcopy(value)
    return item


@pytest.mark.django_db
@pytest.mark.parametrize("changes", INVALID_EVENTS.values(), ids=INVALID_EVENTS.keys())
def test_an_invalid_event_fails_both_the_document_and_the_code(client, changes):
    item = _invalid(changes)
    assert not EVENT.is_valid(item)
    [result] = signed_post(client, {"events": [item]}).json()["results"]
    assert result["result"] == "rejected"


@pytest.mark.django_db
def test_every_error_response_matches_its_documented_schema(client):
    raw = json.dumps(upserted()).encode()
    cases = {
        400: signed_post(client, b"{nope"),
        401: client.post("/api/v1/events", data=raw, content_type="application/json"),
        413: signed_post(client, b" " * (1024 * 1024 + 1)),
        415: signed_post(client, raw, content_type="text/plain"),
    }
    envelope = signed_post(client, {"events": []})
    stale = signed_post(client, raw, timestamp=int(time.time()) - 1000)
    for status, response in [*cases.items(), (400, envelope), (401, stale)]:
        assert response.status_code == status
        assert not list(ERRORS[status].iter_errors(response.json())), (status, response.json())


@pytest.mark.django_db
@settings(FIXTURE_SETTINGS, max_examples=150 * SCALE)
@given(item=mutated_events() | st.just(None))
def test_whatever_the_code_accepts_the_document_allows_and_every_200_body_conforms(client, item):
    """The document is never stricter than the code, and responses always match it."""
    item = item or upserted("ORD-PLAIN")
    raw = json.dumps({"events": [item]}).replace("Infinity", "1e400").encode()
    response = signed_post(client, raw)
    assert response.status_code == 200
    assert not list(RESULTS.iter_errors(response.json()))
    [result] = response.json()["results"]
    if result["result"] in ("accepted", "pending", "stale"):
        assert not list(EVENT.iter_errors(item)), item


def test_the_document_mentions_the_tracking_url_format():
    description = DOCUMENT["components"]["schemas"]["Result"]["properties"]["tracking_url"]["description"]
    assert "{PORCHLIGHT_PUBLIC_URL}/t/{token}/" in description
    assert django_settings.PORCHLIGHT_PUBLIC_URL  # the base the format refers to is configured
