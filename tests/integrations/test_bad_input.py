"""Malformed, hostile and oversized input to both adapters: 4xx for what is not authentic or not
the provider's envelope, 200 for authentic odd payloads, never a 5xx; payloads never logged."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.integrations.conftest import (
    ONFLEET_URL,
    SPOKE_URL,
    onfleet_signature,
    post_onfleet,
    post_spoke,
    recorded,
    spoke_signature,
)
from tracking.integrations import services
from tracking.models import Delivery, PayloadOutcome, ProviderPayload

pytestmark = pytest.mark.django_db

MIB = 1024 * 1024
PROVIDERS = [
    pytest.param((post_onfleet, "onfleet", "task_created"), id="onfleet"),
    pytest.param((post_spoke, "spoke", "stop_allocated"), id="spoke"),
]


@pytest.fixture(params=PROVIDERS)
def provider(request) -> tuple[Any, str, str]:
    return request.param


def test_a_body_over_1_mib_is_413(client, provider):
    post, _, _ = provider
    response = post(client, b'{"x": "' + b"a" * MIB + b'"}')
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"]
)
def test_a_body_that_is_not_utf8_json_by_its_type_is_415(client, provider, content_type):
    post, name, sample = provider
    response = post(client, recorded(name, sample), content_type=content_type)
    assert response.status_code == 415
    assert not ProviderPayload.objects.exists()


@pytest.mark.parametrize(
    "body",
    [b"{", b"not json", b"\xff\xfe{}", b'{"time": NaN}', b'{"a": Infinity}', b"[" * 100_000 + b"]" * 100_000],
)
def test_a_signed_body_that_is_not_json_is_400(client, provider, body):
    post, _, _ = provider
    response = post(client, body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"


ONFLEET_ENVELOPES = [
    [],
    "a string",
    {},
    {"triggerId": 0},
    {"time": 1795273200000},
    {"triggerId": "0", "time": 1795273200000},
    {"triggerId": True, "time": 1795273200000},
    {"triggerId": 0, "time": "yesterday"},
    {"triggerId": 0, "time": 10**400},
    {"triggerId": 0, "time": -1},
    {"triggerId": 0, "time": 1.5e308},
]
SPOKE_ENVELOPES = [
    [],
    {},
    {"type": "stop.allocated"},
    {"type": 5, "created": 1795273200000},
    {"type": "x" * 65, "created": 1795273200000},
    {"type": "stop.allocated", "created": "now"},
    {"type": "stop.allocated", "created": 10**400},
]


@pytest.mark.parametrize("document", ONFLEET_ENVELOPES)
def test_json_that_is_not_an_onfleet_envelope_is_400(client, document):
    response = post_onfleet(client, json.dumps(document))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_payload"
    assert not ProviderPayload.objects.exists()


@pytest.mark.parametrize("document", SPOKE_ENVELOPES)
def test_json_that_is_not_a_spoke_envelope_is_400(client, document):
    response = post_spoke(client, json.dumps(document))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_payload"


HOSTILE_TASKS = [
    {"recipients": "everyone", "destination": ["x"]},
    {"recipients": [None, 5], "destination": {"location": ["a", "b"], "address": "nowhere"}},
    {"recipients": [{"name": "x" * 100_000, "phone": "call me"}], "destination": {"location": [1e300, 0]}},
    {
        "recipients": [{"name": "A\u0000na\ud800", "phone": "+19565550123"}],
        "destination": {"address": {"city": "\u0000"}},
    },
    {"id": {"nested": True}, "completeAfter": 10**30, "completeBefore": -5, "completionDetails": "done"},
    {"recipients": [{"name": "Ana", "phone": "+19565550123"}], "destination": {"location": [-999, 999]}},
]


@pytest.mark.parametrize("task", HOSTILE_TASKS)
@pytest.mark.parametrize("trigger", [0, 1, 3, 4, 6, 9, 12])
def test_an_authentic_onfleet_payload_with_hostile_values_is_answered_200(client, task, trigger):
    body = {
        "time": 1795273200000,
        "triggerId": trigger,
        "taskId": "T\u0000~1*x",
        "data": {"task": task},
        "delay": "soon",
    }
    response = post_onfleet(client, body)
    assert response.status_code == 200, response.content[:300]
    payload = ProviderPayload.objects.get()
    assert "\x00" not in payload.key + payload.reference
    assert payload.outcome in (PayloadOutcome.APPLIED, PayloadOutcome.REJECTED, PayloadOutcome.IGNORED)


@pytest.mark.parametrize(
    "stop",
    [
        {"id": "s/1", "recipient": "x", "address": None, "eta": {"eta": "soon"}, "deliveryInfo": []},
        {"id": "s/1" * 200, "recipient": {"phone": "\ud800"}, "address": {"address": "," * 10_000}},
        {
            "id": "s/2",
            "deliveryInfo": {"attempted": True, "succeeded": True, "photoUrls": ["javascript:alert(1)", 5]},
        },
        {"id": ["s/3"], "route": {"driver": {"id": "d" * 1000}}},
    ],
)
@pytest.mark.parametrize("kind", ["stop.allocated", "stop.attempted_delivery", "stop.next_in_route"])
def test_an_authentic_spoke_payload_with_hostile_values_is_answered_200(client, stop, kind):
    response = post_spoke(client, {"type": kind, "version": "v1", "created": 1795273200000, "data": stop})
    assert response.status_code == 200, response.content[:300]
    assert not Delivery.objects.filter(proof__photo_url__startswith="javascript").exists()


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)
FUZZ = hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SPOKE_TYPES = [*("stop." + t for t in ("allocated", "out_for_delivery", "attempted_delivery", "departed")),
               "stop.next_in_route", "stop.tracking_link_added", "test.send_event", "x"]  # fmt: skip


@FUZZ
@given(document=JSON_VALUES, trigger=st.integers(min_value=-2, max_value=20))
def test_no_authentic_onfleet_body_gets_a_5xx(client, document, trigger):
    body = {"time": 1795273200000, "triggerId": trigger, "taskId": "fuzz", "data": {"task": document}}
    response = post_onfleet(client, body)
    assert response.status_code == 200


@FUZZ
@given(stop=JSON_VALUES, kind=st.sampled_from(SPOKE_TYPES))
def test_no_authentic_spoke_body_gets_a_5xx(client, stop, kind):
    if isinstance(stop, dict):
        stop.setdefault("id", "plans/p/stops/fuzz")
    response = post_spoke(client, {"type": kind, "version": "v1", "created": 1795273200000, "data": stop})
    assert response.status_code == 200


def test_a_mapping_that_fails_still_answers_200_and_keeps_the_payload_for_a_replay(client, monkeypatch):
    def broken(document: Any) -> Any:
        raise KeyError("recipients")

    monkeypatch.setitem(services.MAPPERS, "onfleet", broken)
    response = post_onfleet(client, recorded("onfleet", "task_created"))
    assert response.status_code == 200
    payload = ProviderPayload.objects.get()
    assert payload.outcome == PayloadOutcome.FAILED and "KeyError" in payload.error
    assert not Delivery.objects.exists()


def test_a_payload_that_failed_is_applied_when_the_provider_sends_it_again(client, monkeypatch):
    body = recorded("onfleet", "task_created")
    monkeypatch.setitem(services.MAPPERS, "onfleet", lambda document: (_ for _ in ()).throw(TypeError("bug")))
    post_onfleet(client, body)
    monkeypatch.undo()
    # The key is unknown while the mapping fails, so the retry is a new row that applies.
    assert post_onfleet(client, body).status_code == 200
    assert Delivery.objects.count() == 1


def test_a_rejected_payload_is_applied_again_when_the_provider_resends_it(client):
    body = recorded("onfleet", "task_created")
    body["data"]["task"]["destination"]["address"]["postalCode"] = ""
    assert post_onfleet(client, body).json()["outcome"] == "rejected"
    body["data"]["task"]["destination"]["address"]["postalCode"] = "78040"
    again = post_onfleet(client, body).json()
    assert (again["received"], again["outcome"]) == ("again", "applied")
    assert Delivery.objects.get().postcode == "78040"


SECRET_MARKER = "sk_live_DO_NOT_LOG_4242"


@pytest.mark.parametrize(("post", "url", "sign", "document"), [
    (post_onfleet, ONFLEET_URL, onfleet_signature, recorded("onfleet", "task_created")),
    (post_spoke, SPOKE_URL, spoke_signature, recorded("spoke", "stop_allocated")),
])  # fmt: skip
def test_raw_payloads_are_stored_but_never_logged(client, caplog, capfd, post, url, sign, document):
    document = dict(document, apiKey=SECRET_MARKER)
    with caplog.at_level(logging.DEBUG):
        assert post(client, document).status_code == 200
        assert post(client, document).status_code == 200  # again
        post(client, dict(document, extra="x"), secret="00")  # refused: 401
        post(client, json.dumps(document)[:-1])  # not JSON: 400
    assert SECRET_MARKER in ProviderPayload.objects.get().body
    out, err = capfd.readouterr()
    assert SECRET_MARKER not in caplog.text + out + err
