"""Property-based tests of the intake: W5 (any order, any duplicates, same final state) and
W7-style fuzzing (no body and no field value a sender can send gives a 5xx or loses the good
event beside it)."""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import signed_post
from tests.tracking.intake_events import LIFECYCLE, at, eta, ping, proof, status, upserted
from tracking import services, signing
from tracking.models import Delivery, InboundEvent

pytestmark = pytest.mark.django_db

FIXTURE_SETTINGS = settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    database=None,  # fresh examples each run; the suite is reproducible through the seed it prints
)
_run = itertools.count()
# Nightly or by hand: PORCHLIGHT_FUZZ_SCALE=20 runs twenty times as many examples.
SCALE = int(os.environ.get("PORCHLIGHT_FUZZ_SCALE", "1"))
RESULTS = {"accepted", "duplicate", "stale", "pending", "rejected"}


def _fresh(prefix: str) -> str:
    return f"{prefix}-{next(_run)}"


# --- W5 test_out_of_order_and_duplicate_status_events ----------------------------------------


@st.composite
def lifecycle_deliveries(draw: st.DrawFn) -> tuple[str, list[list[dict[str, Any]]]]:
    """One delivery's upsert and lifecycle, permuted, with duplicates, cut into requests."""
    reference = _fresh("W5")
    events = [upserted(reference, id=f"{reference}-up", minutes=0)]
    events += [
        status(reference, value, minutes=10 * (i + 1), id=f"{reference}-{value}")
        for i, value in enumerate(LIFECYCLE)
    ]
    repeats = draw(st.lists(st.sampled_from(events), max_size=8))
    order = draw(st.permutations(events + repeats))
    cuts = sorted(draw(st.sets(st.integers(1, len(order) - 1), max_size=4)))
    bounds = [0, *cuts, len(order)]
    return reference, [order[a:b] for a, b in itertools.pairwise(bounds)]


@settings(FIXTURE_SETTINGS, max_examples=200 * SCALE)
@given(case=lifecycle_deliveries())
def test_out_of_order_and_duplicate_status_events_end_at_the_lifecycle_maximum(
    post_events, monkeypatch, case
):
    reference, requests = case
    changes: list[Any] = []

    def record(*, changes: list[Any]) -> None:  # spies on the hook; notifications are not ours to test here
        seen.extend(changes)

    seen = changes
    monkeypatch.setattr(services, "notifications_for_changes", record)
    rank = {value: i for i, value in enumerate(LIFECYCLE)}
    seen_rank = -1
    results: list[dict[str, Any]] = []
    for batch in requests:
        response = post_events({"events": batch})
        assert response.status_code == 200
        results += response.json()["results"]
        delivery = Delivery.objects.filter(reference=reference).first()
        if delivery is not None and delivery.status_at is not None:
            assert rank[delivery.status] >= seen_rank, "a status went backwards"
            seen_rank = rank[delivery.status]
    delivery = Delivery.objects.get(reference=reference)
    assert (delivery.status, delivery.status_at.isoformat()) == ("delivered", at(50))
    assert InboundEvent.objects.filter(reference=reference).count() == 6
    assert not InboundEvent.objects.filter(reference=reference, result="pending").exists()
    # One change per status event that really moved the delivery, each one forward; none for
    # the duplicates and the stale.
    status_changes = [c for c in changes if c.kind == "status" and c.delivery.reference == reference]
    moved = [c.event.values["status"] for c in status_changes]
    assert moved == sorted(moved, key=rank.__getitem__)
    assert len({c.event.id for c in status_changes}) == len(status_changes) <= len(LIFECYCLE)
    final = dict(
        InboundEvent.objects.filter(reference=reference, type="delivery.status").values_list(
            "event_id", "result"
        )
    )
    assert {c.event.id for c in status_changes} == {i for i, result in final.items() if result == "accepted"}
    assert {r["result"] for r in results} <= {"accepted", "stale", "duplicate", "pending"}


# --- W7-style fuzz ------------------------------------------------------------------------

any_text = st.text(
    st.characters(codec=None, exclude_categories=()), max_size=40
)  # NUL and lone surrogates too
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats(allow_nan=False, allow_infinity=False) | any_text
    | st.sampled_from(["", "2026-11-21T10:00:00", "2026-11-21T10:00:00Z", "9999-12-31T23:59:59-23:59",
                       "delivered",
                       "data:image/png;base64,AAAA", "https://example.com/x.png", "+19565550123", "a@b.co"])
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


def _post_json(client: Any, document: Any) -> Any:
    # 1e400 is what a sender writes for a number too big for a double.
    raw = json.dumps(document).replace("Infinity", "1e400").encode()
    return signed_post(client, raw)


def _assert_well_formed(response: Any, count: int | None = None) -> list[dict[str, Any]]:
    assert response.status_code < 500, response.content[:300]
    assert response.status_code in (200, 400), response.content[:300]
    body = response.json()
    if response.status_code == 400:
        assert body["error"] in ("invalid_json", "invalid_envelope") and isinstance(body["detail"], str)
        return []
    results = body["results"]
    if count is not None:
        assert len(results) == count
    for result in results:
        assert result["result"] in RESULTS
        assert result["id"] is None or isinstance(result["id"], str)
        assert ("errors" in result) == (result["result"] == "rejected")
    return results


@settings(FIXTURE_SETTINGS, max_examples=250 * SCALE)
@given(
    document=json_values
    | st.dictionaries(st.sampled_from(["id", "type", "occurred_at", "data", "events"]), json_values)
)
def test_random_json_bodies_never_give_a_5xx(client, document):
    _assert_well_formed(_post_json(client, document))


@settings(FIXTURE_SETTINGS, max_examples=100 * SCALE)
@given(raw=st.binary(max_size=300))
def test_random_bytes_never_give_a_5xx(client, raw):
    response = signed_post(client, raw) if raw else signed_post(client, b" ")
    assert response.status_code in (200, 400)


def _paths(value: Any, prefix: str = "") -> list[str]:
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            paths += _paths(child, f"{prefix}.{key}" if prefix else key)
    return paths


TEMPLATES = {
    "upserted": lambda ref: upserted(ref),
    "status": lambda ref: status(ref, driver={"id": "drv_f", "name": "Sam", "vehicle": "van"}, reason="late"),
    "eta": lambda ref: eta(ref, window={"start": at(60), "end": at(90)}, stops_before=2),
    "location": lambda ref: ping("drv_f", heading=10, speed_mps=3, accuracy_m=5),
    "proof": lambda ref: proof(ref, note="n", photo_url="https://example.com/p.jpg"),
}
TEMPLATE_PATHS = {name: _paths(make("R")) for name, make in TEMPLATES.items()}


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A schema-shaped event of any type with some fields set to random values or removed."""
    name = draw(st.sampled_from(sorted(TEMPLATES)))
    item = TEMPLATES[name](draw(st.sampled_from(["ORD-F1", "ORD-F2", _fresh("ORD-F")])))
    item["id"] = draw(st.sampled_from([_fresh("fz"), "fz-shared"]) | any_text)
    for path in draw(st.lists(st.sampled_from(TEMPLATE_PATHS[name]), min_size=1, max_size=3, unique=True)):
        *parents, last = path.split(".")
        target = item
        for key in parents:
            target = target.get(key) if isinstance(target, dict) else None
        if isinstance(target, dict):
            if draw(st.booleans()) and last in target:
                del target[last]
            else:
                target[last] = draw(json_values)
    return item


@settings(FIXTURE_SETTINGS, max_examples=300 * SCALE)
@given(bad=st.lists(mutated_events(), min_size=1, max_size=4), position=st.integers(0, 4))
def test_schema_shaped_events_with_random_values_never_give_a_5xx_or_lose_the_good_one(client, bad, position):
    reference = _fresh("ORD-GOOD")
    good = upserted(reference, id=f"{reference}-id")
    items = list(bad)
    items.insert(min(position, len(items)), good)
    results = _assert_well_formed(_post_json(client, {"events": items}), count=len(items))
    mine = results[items.index(good)]
    assert mine["result"] == "accepted" and mine["tracking_url"].endswith("/")
    assert Delivery.objects.filter(reference=reference).exists()


# --- headers a sender controls ------------------------------------------------------------

header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=300)


header_pieces = st.lists(st.sampled_from(["t=", "v1=", "v0=", ",", "=", " ", "1763", "a" * 64, "-"])).map(
    "".join
)


@settings(FIXTURE_SETTINGS, max_examples=300 * SCALE)
@given(header=header_text | header_pieces)
def test_the_signature_parser_only_ever_raises_a_signature_error(header):
    try:
        parsed = signing.parse(header)
    except signing.SignatureError as error:
        assert error.code in ("missing_signature", "invalid_signature")
    else:
        assert parsed.signatures and all(len(s) == 64 for s in parsed.signatures)


@settings(FIXTURE_SETTINGS, max_examples=150 * SCALE)
@given(content_type=header_text, signature=header_text)
def test_random_content_type_and_signature_headers_never_give_a_5xx(client, content_type, signature):
    response = client.post(
        "/api/v1/events",
        data=b'{"id": "x"}',
        content_type=content_type,
        headers={signing.HEADER: signature},
        CONTENT_TYPE=content_type,
    )
    assert response.status_code in (401, 415)
    assert set(response.json()) == {"error", "detail"}
