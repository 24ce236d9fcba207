"""`POST /api/v1/events` against every line of section 1 of the routing-events contract."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from tests.conftest import signed_post
from tests.tracking.intake_events import (
    next_id,
    ping,
    status,
    upserted,
)
from tracking import signing
from tracking.models import Delivery, InboundEvent, LocationPing

pytestmark = pytest.mark.django_db

MIB = 1024 * 1024
INVALID_JSON = {"error": "invalid_json", "detail": "The body is not valid UTF-8 JSON."}
INVALID_ENVELOPE = {
    "error": "invalid_envelope",
    "detail": 'Send one EVENT object, or {"events": [...]} with 1 to 500 events.',
}
TOO_LARGE = {"error": "payload_too_large", "detail": "The body must be at most 1 MiB."}
UNSUPPORTED = {"error": "unsupported_media_type", "detail": "Send Content-Type: application/json (UTF-8)."}
MISSING_SIGNATURE = {"error": "missing_signature", "detail": "The Porchlight-Signature header is required."}
INVALID_SIGNATURE = {"error": "invalid_signature", "detail": "No signature matches this body."}
STALE_SIGNATURE = {"error": "stale_signature", "detail": "t is more than 300 s away from the server's clock."}


def results_of(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.content[:500]
    body = response.json()
    assert list(body) == ["results"]
    return body["results"]


def post_raw(client: Client, raw: bytes, *, content_type: str = "application/json", **kwargs: Any) -> Any:
    if raw:
        return signed_post(client, raw, content_type=content_type, **kwargs)
    # The test client drops the Content-Type of an empty body; a real sender would not.
    header = signing.sign(secret=settings.PORCHLIGHT_ROUTING_SECRETS[0], body=raw)
    return client.post(
        "/api/v1/events",
        data=raw,
        content_type=content_type,
        headers={signing.HEADER: header},
        CONTENT_TYPE=content_type,
    )


def one(post_events: Any, item: Any) -> dict[str, Any]:
    [result] = results_of(post_events({"events": [item]}))
    return result


# --- request: envelope, size, media type --------------------------------------------------


def test_a_single_event_body_gets_one_result(post_events):
    assert results_of(post_events(upserted("ORD-S", id="evt_single")))[0]["result"] == "accepted"


def test_a_batch_gets_one_result_per_event_in_request_order(post_events):
    items = [status("ORD-B", id="b3"), upserted("ORD-B", id="b1"), {"id": "b2"}, ping(id="b4")]
    results = results_of(post_events({"events": items}))
    assert [(r["id"], r["result"]) for r in results] == [
        ("b3", "accepted"), ("b1", "accepted"), ("b2", "rejected"), ("b4", "accepted"),
    ]  # fmt: skip


def test_a_batch_of_500_events_is_accepted(post_events):
    results = results_of(post_events({"events": [ping(f"drv_{i % 7}", minutes=i) for i in range(500)]}))
    assert len(results) == 500 and {r["result"] for r in results} == {"accepted"}
    assert InboundEvent.objects.count() == 500


@pytest.mark.parametrize(
    "document",
    [
        {"events": []},
        {"events": [ping() for _ in range(501)]},
        {"events": {"id": "x"}},
        {"events": None},
        [ping()],
        "an event",
        42,
        None,
        {},
        {"hello": "world"},
    ],
    ids=["0 events", "501 events", "events not a list", "events null", "bare list", "string", "number",
         "null", "empty object", "unrelated object"],
)  # fmt: skip
def test_a_body_that_is_neither_an_event_nor_an_envelope_is_400_invalid_envelope(post_events, document):
    response = post_events(json.dumps(document))
    assert (response.status_code, response.json()) == (400, INVALID_ENVELOPE)
    assert InboundEvent.objects.count() == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b'{"id": "a", "type": ',
        b"\xff\xfe{}",  # not UTF-8
        b'{"id": NaN}',
        b'{"id": Infinity}',
        b'{"id": -Infinity}',
        b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than any parser stack
        b'{"id": 1' + b"1" * 5000 + b"}",  # an integer of 5001 digits
        b"\x00",
    ],
    ids=["broken", "empty", "truncated", "latin-1 bytes", "NaN", "Infinity", "-Infinity", "deep nesting",
         "huge integer", "NUL"],
)  # fmt: skip
def test_a_body_that_is_not_json_is_400_invalid_json(client, raw):
    response = post_raw(client, raw)
    assert (response.status_code, response.json()) == (400, INVALID_JSON)
    assert InboundEvent.objects.count() == 0


def test_a_body_over_1_mib_is_413_before_anything_else(client):
    raw = json.dumps({"events": [upserted(note="x" * MIB)]}).encode()
    response = post_raw(client, raw)
    assert (response.status_code, response.json()) == (413, TOO_LARGE)
    unsigned = client.post("/api/v1/events", data=raw, content_type="text/plain")
    assert (unsigned.status_code, unsigned.json()) == (413, TOO_LARGE)


def test_a_body_of_exactly_1_mib_is_read(client):
    item = upserted("ORD-MIB", id="evt_mib", padding="")
    raw = json.dumps(item).encode()
    item["data"]["padding"] = "x" * (MIB - len(raw))
    raw = json.dumps(item).encode()
    assert len(raw) == MIB
    assert results_of(post_raw(client, raw))[0]["result"] == "accepted"
    assert len(post_raw(client, raw + b" ").content) > 0
    assert post_raw(client, raw + b" ").status_code == 413


def test_a_declared_length_over_1_mib_is_413_without_reading_the_body(client):
    response = client.post(
        "/api/v1/events", data=b"{}", content_type="application/json", CONTENT_LENGTH=str(MIB + 1)
    )
    assert (response.status_code, response.json()) == (413, TOO_LARGE)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/json-seq", "application/json; charset=latin-1", "application/json; charset=utf-16",
     "text/json", ""],
)  # fmt: skip
def test_anything_but_utf8_application_json_is_415(client, content_type):
    raw = json.dumps(upserted()).encode()
    response = post_raw(client, raw, content_type=content_type)
    assert (response.status_code, response.json()) == (415, UNSUPPORTED)
    assert InboundEvent.objects.count() == 0


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "application/json;charset=UTF-8",
     'application/json; charset="utf-8"', "Application/JSON", "application/json; charset=utf8; foo=bar"],
)  # fmt: skip
def test_application_json_with_parameters_is_accepted(client, content_type):
    raw = json.dumps(upserted("ORD-CT", id=next_id())).encode()
    assert results_of(post_raw(client, raw, content_type=content_type))[0]["result"] == "accepted"


# --- signature ----------------------------------------------------------------------------


def test_a_missing_signature_is_401_missing_signature(client):
    response = client.post("/api/v1/events", data=json.dumps(upserted()), content_type="application/json")
    assert (response.status_code, response.json()) == (401, MISSING_SIGNATURE)


def test_a_wrong_signature_is_401_invalid_signature(post_events):
    response = post_events(upserted(), secret="not-a-configured-secret")
    assert (response.status_code, response.json()) == (401, INVALID_SIGNATURE)


def test_a_malformed_signature_is_401_invalid_signature(client):
    response = client.post(
        "/api/v1/events",
        data=json.dumps(upserted()),
        content_type="application/json",
        headers={signing.HEADER: "v1=zz"},
    )
    assert response.status_code == 401 and response.json()["error"] == "invalid_signature"
    assert set(response.json()) == {"error", "detail"}


@pytest.mark.parametrize("seconds", [-301, 301, -86_400])
def test_a_signature_more_than_300_s_away_is_401_stale_signature(post_events, monkeypatch, seconds):
    now = int(time.time())
    monkeypatch.setattr(signing.time, "time", lambda: float(now))  # no drift on a slow run
    response = post_events(upserted(), timestamp=now + seconds)
    assert (response.status_code, response.json()) == (401, STALE_SIGNATURE)
    assert InboundEvent.objects.count() == 0


def test_a_signature_290_s_old_is_still_accepted(post_events):
    assert results_of(post_events(upserted(), timestamp=int(time.time()) - 290))[0]["result"] == "accepted"


def test_the_second_configured_secret_is_accepted(post_events):
    response = post_events(upserted(), secret=settings.PORCHLIGHT_ROUTING_SECRETS[1])
    assert results_of(response)[0]["result"] == "accepted"


def test_replay_window(client, monkeypatch):
    """W3: a captured delivery replayed 10 s later is a duplicate; 301 s later, stale."""
    raw = json.dumps({"events": [upserted("ORD-W3", id="evt_w3"), status("ORD-W3", id="evt_w3b")]}).encode()
    captured_at = int(time.time())
    header = signing.sign(secret=settings.PORCHLIGHT_ROUTING_SECRETS[0], body=raw, timestamp=captured_at)

    def replay(after: int) -> Any:
        monkeypatch.setattr(signing.time, "time", lambda: captured_at + after)
        return client.post(
            "/api/v1/events", data=raw, content_type="application/json", headers={signing.HEADER: header}
        )

    assert [r["result"] for r in results_of(replay(0))] == ["accepted", "accepted"]
    rows, state = InboundEvent.objects.count(), Delivery.objects.values().get()
    assert [r["result"] for r in results_of(replay(10))] == ["duplicate", "duplicate"]
    assert (InboundEvent.objects.count(), Delivery.objects.values().get()) == (rows, state)
    late = replay(301)
    assert (late.status_code, late.json()) == (401, STALE_SIGNATURE)
    assert (InboundEvent.objects.count(), Delivery.objects.values().get()) == (rows, state)


def test_secret_rotation_overlap(client, settings):
    """W4: 500 deliveries signed with the old, the new or both secrets are all accepted;
    once the old one is revoked, old-only is always refused and new always accepted.

    Each delivery (request) carries one driver ping, the cheapest event to apply: the
    signature is what is under test."""
    settings.PORCHLIGHT_ROUTING_SECRETS = ["old-secret", "new-secret"]

    def send(n: int, signed_with: str) -> Any:
        raw = json.dumps(ping(f"drv_w4_{n % 10}", minutes=n, id=f"evt_w4_{n}")).encode()
        t = int(time.time())
        secrets = {"old": ["old-secret"], "new": ["new-secret"], "both": ["old-secret", "new-secret"]}[
            signed_with
        ]
        header = f"t={t}," + ",".join(
            f"v1={signing.compute(secret=s, timestamp=t, body=raw)}" for s in secrets
        )
        return client.post(
            "/api/v1/events", data=raw, content_type="application/json", headers={signing.HEADER: header}
        )

    kinds = ("old", "new", "both")
    during = [send(n, kinds[n % 3]) for n in range(500)]
    assert [r.status_code for r in during] == [200] * 500
    assert sum(r.json()["results"][0]["result"] == "accepted" for r in during) == 500
    settings.PORCHLIGHT_ROUTING_SECRETS = ["new-secret"]
    after = {
        kind: [send(n, kind).status_code for n in range(500 + i, 650, 3)] for i, kind in enumerate(kinds)
    }
    assert set(after["old"]) == {401} and len(after["old"]) == 50
    assert set(after["new"]) == {200} and set(after["both"]) == {200}
    assert LocationPing.objects.count() == 500 + len(after["new"]) + len(after["both"])
    assert InboundEvent.objects.count() == LocationPing.objects.count()


# --- results ------------------------------------------------------------------------------


def test_an_upsert_result_carries_the_absolute_tracking_url(post_events, settings):
    settings.PORCHLIGHT_PUBLIC_URL = "https://track.example.com"
    result = one(post_events, upserted("ORD-URL", id="evt_url"))
    delivery = Delivery.objects.get(reference="ORD-URL")
    assert result == {
        "id": "evt_url",
        "result": "accepted",
        "tracking_url": f"https://track.example.com/t/{delivery.tracking_token}/",
    }
    token = result["tracking_url"].rstrip("/").rsplit("/", 1)[1]
    assert len(token) >= 22 and "ORD" not in token
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_a_duplicate_upsert_still_carries_the_tracking_url(post_events):
    first = one(post_events, upserted("ORD-DUP", id="evt_dup"))
    again = one(post_events, upserted("ORD-DUP", id="evt_dup"))
    assert again == {"id": "evt_dup", "result": "duplicate", "tracking_url": first["tracking_url"]}


def test_a_stale_upsert_carries_the_tracking_url(post_events):
    first = one(post_events, upserted("ORD-ST", minutes=10))
    older = one(post_events, upserted("ORD-ST", minutes=5))
    assert older["result"] == "stale" and older["tracking_url"] == first["tracking_url"]


def test_an_id_reused_with_a_different_body_is_a_duplicate_and_changes_nothing(post_events):
    first = one(post_events, upserted("ORD-R1", id="evt_reuse", minutes=1))
    before = Delivery.objects.values().get()
    other = upserted(
        "ORD-R2", id="evt_reuse", minutes=50, customer={"name": "Eve", "email": "eve@example.com"}
    )
    assert one(post_events, other) == {
        "id": "evt_reuse",
        "result": "duplicate",
        "tracking_url": first["tracking_url"],
    }
    assert one(post_events, status("ORD-R1", "delivered", id="evt_reuse")) == {
        "id": "evt_reuse",
        "result": "duplicate",
    }
    assert Delivery.objects.values().get() == before
    assert InboundEvent.objects.count() == 1


def test_an_invalid_body_under_an_id_already_received_is_a_duplicate(post_events):
    one(post_events, upserted("ORD-R3", id="evt_known"))
    assert one(post_events, {"id": "evt_known", "type": "nonsense"}) == {
        "id": "evt_known",
        "result": "duplicate",
    }
    assert InboundEvent.objects.count() == 1


def test_inside_one_batch_a_bad_body_is_a_duplicate_only_after_a_good_one_with_its_id(post_events):
    bad = {"id": "evt_pair", "type": "nonsense"}
    good = upserted("ORD-PAIR", id="evt_pair")
    assert [r["result"] for r in results_of(post_events({"events": [bad, good, bad]}))] == [
        "rejected",
        "accepted",
        "duplicate",
    ]
    assert InboundEvent.objects.filter(event_id="evt_pair").count() == 1
    assert InboundEvent.objects.filter(result="rejected").count() == 1


def test_a_rejected_event_can_be_sent_again_corrected_under_the_same_id(post_events):
    bad = upserted("ORD-FIX", id="evt_fix", customer={"name": "No contact"})
    assert one(post_events, bad)["result"] == "rejected"
    assert one(post_events, upserted("ORD-FIX", id="evt_fix"))["result"] == "accepted"


def test_duplicate_ids_inside_one_batch_are_applied_once(post_events):
    items = [
        status("ORD-D", "scheduled", id="evt_same", minutes=1),
        status("ORD-D", "delivered", id="evt_same", minutes=9),
    ]
    items.insert(0, upserted("ORD-D"))
    results = results_of(post_events({"events": items}))
    assert [r["result"] for r in results] == ["accepted", "accepted", "duplicate"]
    assert Delivery.objects.get().status == "scheduled"
    assert InboundEvent.objects.filter(event_id="evt_same").count() == 1


def test_a_duplicate_upsert_inside_one_batch_carries_the_tracking_url(post_events):
    results = results_of(post_events({"events": [upserted("ORD-DB", id="evt_db")] * 2}))
    assert [r["result"] for r in results] == ["accepted", "duplicate"]
    assert results[0]["tracking_url"] == results[1]["tracking_url"]


@pytest.mark.parametrize(
    "raw_id",
    [None, "", 42, ["evt"], {"id": "x"}, "a" * 65, "evt 1", "evt/1", "évt", "evt\u0000", "evt\n"],
)
def test_an_event_with_no_usable_id_is_rejected_with_a_null_id(post_events, raw_id):
    item = upserted("ORD-NOID")
    if raw_id is None:
        del item["id"]
    else:
        item["id"] = raw_id
    result = one(post_events, item)
    assert result["id"] is None and result["result"] == "rejected" and "id" in result["errors"]
    assert set(result) == {"id", "result", "errors"}


def test_an_id_of_64_allowed_characters_is_usable(post_events):
    event_id = ("Az09_.:-" * 8)[:64]
    assert one(post_events, upserted("ORD-64", id=event_id))["id"] == event_id


def test_a_non_object_event_in_a_batch_is_rejected_alone(post_events):
    results = results_of(post_events({"events": ["text", 3, None, [], upserted("ORD-NO")]}))
    assert [r["result"] for r in results] == ["rejected"] * 4 + ["accepted"]
    assert all(r["id"] is None for r in results[:4])


@pytest.mark.parametrize("declared", ["abc", "-1", "", "99999999999999999999999", " 12 "])
def test_a_nonsense_content_length_is_a_clean_4xx(client, declared):
    raw = json.dumps(upserted("ORD-CL", id=next_id())).encode()
    header = signing.sign(secret=settings.PORCHLIGHT_ROUTING_SECRETS[0], body=raw)
    response = client.post(
        "/api/v1/events",
        data=raw,
        content_type="application/json",
        headers={signing.HEADER: header},
        CONTENT_LENGTH=declared,
    )
    assert 200 <= response.status_code < 500
    assert response.status_code != 200 or response.json()["results"][0]["result"] == "accepted"


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_other_methods_on_the_intake_are_405(client, method):
    assert getattr(client, method)("/api/v1/events").status_code == 405


@pytest.mark.django_db(transaction=True)  # the push runs only after a real commit
def test_a_failing_live_push_after_the_commit_does_not_fail_the_request(post_events, monkeypatch):
    from tracking import live

    def broken(**kwargs: Any) -> None:
        raise ConnectionError("channel layer down")

    monkeypatch.setattr(live, "publish_batch", broken)
    assert one(post_events, upserted("ORD-LIVE"))["result"] == "accepted"
    assert Delivery.objects.filter(reference="ORD-LIVE").exists()
