"""`POST /api/v1/events` against every line of section 1 of the routing-events contract."""

# The tables of cases read best one case per line.
# ruff: noqa: E501

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from tests.conftest import signed_post
from tests.tracking.intake_events import (
    at,
    data_url,
    eta,
    event,
    image_bytes,
    next_id,
    ping,
    proof,
    status,
    upserted,
)
from tracking import signing
from tracking.models import Delivery, DeliveryProof, Driver, InboundEvent, LocationPing

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
    ids=["0 events", "501 events", "events not a list", "events null", "bare list", "string", "number", "null",
         "empty object", "unrelated object"],
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
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/json-seq",
     "application/json; charset=latin-1", "application/json; charset=utf-16", "text/json", ""],
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
def test_a_signature_more_than_300_s_away_is_401_stale_signature(post_events, seconds):
    response = post_events(upserted(), timestamp=int(time.time()) + seconds)
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


# --- bad input beside a good event ----------------------------------------------------------

HUGE = 10**400


def _with(item: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    item = json.loads(json.dumps(item))
    *parents, last = path.split(".")
    target = item
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return item


_DELETE = object()
BAD_EVENTS = [
    ("unknown type", lambda: _with(status("ORD-X"), "type", "delivery.teleported"), "type"),
    ("type not a string", lambda: _with(status("ORD-X"), "type", ["delivery.status"]), "type"),
    ("occurred_at without offset", lambda: _with(status("ORD-X"), "occurred_at", "2026-11-21T09:00:00"), "occurred_at"),
    ("occurred_at a date only", lambda: _with(status("ORD-X"), "occurred_at", "2026-11-21"), "occurred_at"),
    ("occurred_at a number", lambda: _with(status("ORD-X"), "occurred_at", 1763715600), "occurred_at"),
    ("occurred_at leap second", lambda: _with(status("ORD-X"), "occurred_at", "2026-12-31T23:59:60Z"), "occurred_at"),
    ("occurred_at month 13", lambda: _with(status("ORD-X"), "occurred_at", "2026-13-01T00:00:00Z"), "occurred_at"),
    ("occurred_at past year 9999 in UTC", lambda: _with(status("ORD-X"), "occurred_at", "9999-12-31T23:59:59-12:00"), "occurred_at"),
    ("occurred_at before year 1 in UTC", lambda: _with(status("ORD-X"), "occurred_at", "0001-01-01T00:00:00+14:00"), "occurred_at"),
    ("data missing", lambda: _with(status("ORD-X"), "data", _DELETE), "data"),
    ("data a list", lambda: _with(status("ORD-X"), "data", []), "data"),
    ("no reference", lambda: _with(status("ORD-X"), "data.reference", _DELETE), "data.reference"),
    ("reference a number", lambda: _with(status("ORD-X"), "data.reference", 7), "data.reference"),
    ("unknown status", lambda: status("ORD-X", "teleported"), "data.status"),
    ("status a list", lambda: status("ORD-X", ["delivered"]), "data.status"),  # type: ignore[arg-type]
    ("status an object", lambda: status("ORD-X", {"a": 1}), "data.status"),  # type: ignore[arg-type]
    ("driver not an object", lambda: status("ORD-X", driver="drv_7"), "data.driver"),
    ("driver without id", lambda: status("ORD-X", driver={"name": "Sam"}), "data.driver.id"),
    ("no customer", lambda: _with(upserted("ORD-X"), "data.customer", _DELETE), "data.customer"),
    ("neither phone nor email", lambda: upserted("ORD-X", customer={"name": "Ana"}), "data.customer"),
    ("phone not a number", lambda: _with(upserted("ORD-X"), "data.customer.phone", "call me"), "data.customer.phone"),
    ("email not an address", lambda: _with(upserted("ORD-X"), "data.customer.email", "ana@"), "data.customer.email"),
    ("locale not BCP 47", lambda: _with(upserted("ORD-X"), "data.customer.locale", "english please"), "data.customer.locale"),
    ("country not alpha-2", lambda: _with(upserted("ORD-X"), "data.address.country", "USA"), "data.address.country"),
    ("address lat 90.0001", lambda: _with(upserted("ORD-X"), "data.address.lat", 90.0001), "data.address.lat"),
    ("address lon -180.5", lambda: _with(upserted("ORD-X"), "data.address.lon", -180.5), "data.address.lon"),
    ("address lat a string", lambda: _with(upserted("ORD-X"), "data.address.lat", "27.5"), "data.address.lat"),
    ("address lat a boolean", lambda: _with(upserted("ORD-X"), "data.address.lat", True), "data.address.lat"),
    ("address lat a 400-digit integer", lambda: _with(upserted("ORD-X"), "data.address.lat", HUGE), "data.address.lat"),
    ("unknown time zone", lambda: upserted("ORD-X", timezone="Mars/Olympus_Mons"), "data.timezone"),
    ("time zone a path", lambda: upserted("ORD-X", timezone="../../../etc/passwd"), "data.timezone"),
    ("window ends before it starts", lambda: upserted("ORD-X", window={"start": at(60), "end": at(30)}), "data.window.end"),
    ("window start without offset", lambda: upserted("ORD-X", window={"start": "2026-11-21T10:00:00", "end": at(30)}), "data.window.start"),
    ("items negative", lambda: upserted("ORD-X", items=-1), "data.items"),
    ("items a string", lambda: upserted("ORD-X", items="2"), "data.items"),
    ("items a float", lambda: upserted("ORD-X", items=2.5), "data.items"),
    ("items huge", lambda: upserted("ORD-X", items=HUGE), "data.items"),
    ("eta missing", lambda: _with(eta("ORD-X"), "data.eta", _DELETE), "data.eta"),
    ("eta without offset", lambda: _with(eta("ORD-X"), "data.eta", "2026-11-21T10:40:00"), "data.eta"),
    ("stops_before negative", lambda: eta("ORD-X", stops_before=-1), "data.stops_before"),
    ("stops_before fractional", lambda: eta("ORD-X", stops_before=1.5), "data.stops_before"),
    ("ping lat 90.1", lambda: ping(lat=90.1), "data.lat"),
    ("ping lat -91", lambda: ping(lat=-91), "data.lat"),
    ("ping lon 180.01", lambda: ping(lon=180.01), "data.lon"),
    ("ping lon -181", lambda: ping(lon=-181), "data.lon"),
    ("ping lat huge integer", lambda: ping(lat=HUGE), "data.lat"),
    ("ping heading 361", lambda: ping(heading=361), "data.heading"),
    ("ping speed negative", lambda: ping(speed_mps=-1), "data.speed_mps"),
    ("ping without recorded_at", lambda: _with(ping(), "data.recorded_at", _DELETE), "data.recorded_at"),
    ("ping without driver", lambda: _with(ping(), "data.driver_id", _DELETE), "data.driver_id"),
    ("proof with neither photo nor url", lambda: _with(proof("ORD-X"), "data.photo", _DELETE), "data"),
    ("proof url not https", lambda: proof("ORD-X", photo_url="http://example.com/p.jpg"), "data.photo_url"),
    ("proof url not a url", lambda: proof("ORD-X", photo_url="https://"), "data.photo_url"),
    ("photo not an image", lambda: proof("ORD-X", photo="data:image/png;base64," + base64.b64encode(b"hello world").decode()), "data.photo"),
    ("photo a PNG declared as JPEG", lambda: proof("ORD-X", photo=data_url("PNG", declared="JPEG")), "data.photo"),
    ("photo a JPEG declared as PNG", lambda: proof("ORD-X", photo=data_url("JPEG", declared="PNG")), "data.photo"),
    ("photo a GIF", lambda: proof("ORD-X", photo="data:image/gif;base64," + base64.b64encode(image_bytes("GIF")).decode()), "data.photo"),
    ("photo a truncated PNG", lambda: proof("ORD-X", photo=data_url("PNG", image_bytes("PNG")[:-20])), "data.photo"),
    ("photo a truncated JPEG", lambda: proof("ORD-X", photo=data_url("JPEG", image_bytes("JPEG", (64, 64))[:300])), "data.photo"),
    ("photo not base64", lambda: proof("ORD-X", photo="data:image/png;base64,***"), "data.photo"),
    ("photo over 512 KiB", lambda: proof("ORD-X", photo=data_url("PNG", image_bytes("PNG") + b"\0" * 512 * 1024)), "data.photo"),
    ("photo a plain URL", lambda: proof("ORD-X", photo="https://example.com/p.png"), "data.photo"),
    ("NUL in a text", lambda: upserted("ORD-X", zone="north\u0000"), ""),
    ("NUL in a key", lambda: upserted("ORD-X", **{"extra\u0000": 1}), ""),
    ("lone surrogate", lambda: upserted("ORD-X", zone="\ud800"), ""),
    ("infinite number in an extra field", lambda: upserted("ORD-X", extra=float("inf")), ""),
    ("nested 40 deep", lambda: upserted("ORD-X", extra=json.loads("[" * 40 + "]" * 40)), ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "path"), [(make, path) for _, make, path in BAD_EVENTS], ids=[n for n, _, _ in BAD_EVENTS]
)
def test_a_bad_event_is_rejected_with_its_field_and_the_good_one_beside_it_is_applied(client, make, path):
    bad = make()
    good = upserted("ORD-GOOD", id=next_id("good"))
    # allow_nan: the infinite case must reach the server as the JSON a sender would write (1e400).
    raw = json.dumps({"events": [bad, good]}).replace("Infinity", "1e400").encode()
    results = results_of(post_raw(client, raw))
    assert results[0]["result"] == "rejected", results[0]
    assert path in results[0]["errors"], results[0]["errors"]
    assert results[1]["result"] == "accepted" and "tracking_url" in results[1]
    assert list(Delivery.objects.values_list("reference", flat=True)) == ["ORD-GOOD"]
    stored = InboundEvent.objects.get(result="rejected")
    assert stored.event_id is None and stored.errors == results[0]["errors"]


def test_a_batch_mixing_good_and_bad_events_applies_every_good_one(post_events):
    items = [
        upserted("ORD-MIX"), status("ORD-MIX", "teleported"), status("ORD-MIX", "arriving", minutes=5),
        {"id": "mix-bad"}, eta("ORD-MIX", stops_before=2), ping(lat=123), ping(minutes=9),
    ]  # fmt: skip
    results = results_of(post_events({"events": items}))
    assert [r["result"] for r in results] == [
        "accepted",
        "rejected",
        "accepted",
        "rejected",
        "accepted",
        "rejected",
        "accepted",
    ]
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.stops_before) == ("arriving", 2)
    assert LocationPing.objects.count() == 1


# --- unicode and very long strings in every text field --------------------------------------

UNICODE = "Ñandú 東京 🚚 مرحبا e\u0301 ẞ "

TEXT_FIELDS = [
    # (event factory, path in the event, max length, how to read the stored value back)
    (lambda: upserted("ORD-T"), "data.reference", 200, lambda: Delivery.objects.get().reference),
    (lambda: upserted("ORD-T"), "data.customer.name", 200, lambda: Delivery.objects.get().customer_name),
    (lambda: upserted("ORD-T"), "data.address.line1", 300, lambda: Delivery.objects.get().address_line1),
    (lambda: upserted("ORD-T"), "data.address.line2", 300, lambda: Delivery.objects.get().address_line2),
    (lambda: upserted("ORD-T"), "data.address.city", 200, lambda: Delivery.objects.get().city),
    (lambda: upserted("ORD-T"), "data.address.postcode", 32, lambda: Delivery.objects.get().postcode),
    (lambda: upserted("ORD-T"), "data.zone", 64, lambda: Delivery.objects.get().zone_code),
    (lambda: status("ORD-T", reason=""), "data.reason", 2000, lambda: Delivery.objects.get().status_reason),
    (lambda: status("ORD-T", driver={"id": "d"}), "data.driver.id", 64, lambda: Driver.objects.get().external_id),
    (lambda: status("ORD-T", driver={"id": "d"}), "data.driver.name", 200, lambda: Driver.objects.get().name),
    (lambda: status("ORD-T", driver={"id": "d"}), "data.driver.vehicle", 200, lambda: Driver.objects.get().vehicle),
    (lambda: proof("ORD-T"), "data.recipient_name", 200, lambda: DeliveryProof.objects.get().recipient_name),
    (lambda: proof("ORD-T"), "data.note", 2000, lambda: DeliveryProof.objects.get().note),
    (lambda: ping("d"), "data.driver_id", 64, lambda: Driver.objects.get().external_id),
]  # fmt: skip


def _text(length: int) -> str:
    return (UNICODE * (length // len(UNICODE) + 1))[:length]


@pytest.mark.parametrize(("make", "path", "limit", "stored"), TEXT_FIELDS, ids=[f[1] for f in TEXT_FIELDS])
def test_unicode_text_up_to_the_limit_is_kept_exactly_and_longer_is_rejected(
    post_events, make, path, limit, stored
):
    setup = (
        []
        if path.startswith("data.reference") or make()["type"] == "driver.location"
        else [upserted("ORD-T")]
    )
    value = _text(limit)
    item = _with(make(), path, value)
    reference = value if path == "data.reference" else "ORD-T"
    results = results_of(post_events({"events": [*setup, item]}))
    assert results[-1]["result"] == "accepted", results[-1]
    assert stored() == value
    assert Delivery.objects.filter(reference=reference).exists() or item["type"] == "driver.location"
    for too_long in (value + "x", "🚚" * 40_000):
        result = one(post_events, _with(make(), path, too_long))
        assert result["result"] == "rejected" and path in result["errors"]
    assert stored() == value


# --- ordering: last writer wins, stale, pending ------------------------------------------


def test_the_newest_status_wins_and_an_older_one_arriving_late_is_stale(post_events):
    one(post_events, upserted("ORD-L"))
    assert one(post_events, status("ORD-L", "arriving", minutes=20))["result"] == "accepted"
    assert one(post_events, status("ORD-L", "out_for_delivery", minutes=10))["result"] == "stale"
    delivery = Delivery.objects.get()
    assert delivery.status == "arriving"
    history = InboundEvent.objects.filter(delivery=delivery, type="delivery.status").order_by("occurred_at")
    assert [(e.payload["data"]["status"], e.result) for e in history] == [
        ("out_for_delivery", "stale"),
        ("arriving", "accepted"),
    ]


def test_a_tie_on_occurred_at_goes_to_the_later_received_request(post_events):
    one(post_events, upserted("ORD-TIE"))
    one(post_events, status("ORD-TIE", "arriving", minutes=10))
    assert one(post_events, status("ORD-TIE", "attempt_failed", minutes=10))["result"] == "accepted"
    assert Delivery.objects.get().status == "attempt_failed"


def test_a_tie_inside_one_batch_goes_to_the_later_event(post_events):
    items = [
        upserted("ORD-TB"),
        status("ORD-TB", "arriving", minutes=10),
        status("ORD-TB", "delivered", minutes=10),
    ]
    assert [r["result"] for r in results_of(post_events({"events": items}))] == ["accepted"] * 3
    assert Delivery.objects.get().status == "delivered"


PAIRS = [
    (lambda: upserted("ORD-O", minutes=30, zone="new"), lambda: upserted("ORD-O", minutes=20, zone="old")),
    (lambda: status("ORD-O", "arriving", minutes=30), lambda: status("ORD-O", "scheduled", minutes=20)),
    (lambda: eta("ORD-O", minutes=30, eta_minutes=95, stops_before=1),
     lambda: eta("ORD-O", minutes=20, eta_minutes=150, stops_before=9)),
    (lambda: proof("ORD-O", minutes=30, note="new"), lambda: proof("ORD-O", minutes=20, note="old")),
]  # fmt: skip


def _assert_newest_kept() -> None:
    delivery = Delivery.objects.get()
    assert (delivery.zone_code, delivery.status, delivery.stops_before, delivery.proof.note) == (
        "new",
        "arriving",
        1,
        "new",
    )
    assert delivery.eta.isoformat() == at(95)


def test_out_of_order_pairs_of_every_kind_keep_the_newest_and_the_late_one_is_stale(post_events):
    one(post_events, upserted("ORD-O", minutes=0))
    for newer, older in PAIRS:
        assert one(post_events, newer())["result"] == "accepted"
        assert one(post_events, older())["result"] == "stale"
    _assert_newest_kept()
    assert InboundEvent.objects.filter(result="stale").count() == 4  # kept in the history


def test_out_of_order_pairs_inside_one_batch_are_applied_in_occurred_at_order(post_events):
    """Within one request nothing arrives late: the pair is replayed oldest first, so both
    apply and the newest is what stays."""
    one(post_events, upserted("ORD-O", minutes=0))
    for newer, older in PAIRS:
        assert [r["result"] for r in results_of(post_events({"events": [newer(), older()]}))] == [
            "accepted"
        ] * 2
    _assert_newest_kept()


def test_a_late_ping_is_kept_in_the_trail_but_never_moves_the_marker_back(post_events):
    one(post_events, ping("drv_9", minutes=10, lat=10.0))
    assert one(post_events, ping("drv_9", minutes=5, lat=5.0))["result"] == "accepted"
    driver = Driver.objects.get(external_id="drv_9")
    assert (driver.lat, driver.position_recorded_at.isoformat()) == (10.0, at(10))
    assert sorted(LocationPing.objects.values_list("lat", flat=True)) == [5.0, 10.0]


def test_pings_in_one_batch_move_the_marker_to_the_newest_whatever_their_order(post_events):
    results_of(post_events({"events": [ping("drv_8", minutes=m, lat=float(m)) for m in (3, 9, 1, 7)]}))
    assert Driver.objects.get(external_id="drv_8").lat == 9.0
    assert LocationPing.objects.count() == 4


def test_events_for_an_unknown_reference_are_pending_and_kept(post_events):
    result = one(post_events, status("ORD-P", "arriving"))
    assert result["result"] == "pending"
    assert InboundEvent.objects.get().result == "pending"
    assert not Delivery.objects.exists()


def test_pending_events_are_applied_in_occurred_at_order_when_the_upsert_arrives_later(post_events):
    # Newest first: applied in arrival order, the older would overwrite the newer.
    later = [status("ORD-PL", "arriving", minutes=30, id="p-new"), status("ORD-PL", "out_for_delivery", minutes=10, id="p-old"),
             eta("ORD-PL", minutes=25, stops_before=1, id="p-eta")]  # fmt: skip
    assert [r["result"] for r in results_of(post_events({"events": later}))] == ["pending"] * 3
    assert one(post_events, upserted("ORD-PL", minutes=0))["result"] == "accepted"
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.stops_before) == ("arriving", 1)
    rows = dict(InboundEvent.objects.values_list("event_id", "result"))
    assert (rows["p-new"], rows["p-old"], rows["p-eta"]) == ("accepted", "accepted", "accepted")
    assert set(InboundEvent.objects.values_list("delivery_id", flat=True)) == {delivery.pk}


def test_pending_and_upsert_in_the_same_batch_are_applied_in_occurred_at_order(post_events):
    items = [status("ORD-PS", "arriving", minutes=30), status("ORD-PS", "out_for_delivery", minutes=10),
             upserted("ORD-PS", minutes=40)]  # fmt: skip
    results = results_of(post_events({"events": items}))
    assert [r["result"] for r in results] == ["accepted"] * 3 and "tracking_url" in results[2]
    assert Delivery.objects.get().status == "arriving"


def test_pending_from_an_earlier_request_and_new_events_merge_in_occurred_at_order(post_events):
    one(post_events, status("ORD-PM", "arriving", minutes=30))
    results = results_of(
        post_events({"events": [upserted("ORD-PM"), status("ORD-PM", "out_for_delivery", minutes=20)]})
    )
    # The pending "arriving" (30) is applied after this batch's "out_for_delivery" (20).
    assert [r["result"] for r in results] == ["accepted", "accepted"]
    assert Delivery.objects.get().status == "arriving"
    assert not InboundEvent.objects.filter(result="pending").exists()


def test_a_pending_event_stays_kept_until_its_delivery_appears(post_events):
    one(post_events, status("ORD-WAIT", "delivered"))
    one(post_events, upserted("ORD-OTHER"))
    assert InboundEvent.objects.get(reference="ORD-WAIT").result == "pending"


def test_the_contract_examples_apply_to_the_documented_state(post_events, contract_examples):
    results = results_of(post_events({"events": contract_examples["inbound"]}))
    assert [r["result"] for r in results] == ["accepted"] * 7 + ["pending"]
    delivery = Delivery.objects.get(reference="ORD-10023")
    assert (delivery.status, delivery.stops_before, delivery.driver.name) == ("delivered", 6, "Sam Ortiz")
    assert bytes(delivery.proof.photo).startswith(b"\x89PNG")


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

    monkeypatch.setattr(live, "publish_changes", broken)
    monkeypatch.setattr(live, "publish_positions", broken)
    assert one(post_events, upserted("ORD-LIVE"))["result"] == "accepted"
    assert Delivery.objects.filter(reference="ORD-LIVE").exists()


# --- optional fields and photos that must be accepted ---------------------------------------


def test_optional_fields_may_be_left_out_and_locale_defaults_to_en(post_events):
    item = upserted("ORD-MIN", customer={"name": "Ana", "email": "ana@example.com"})
    for key in ("timezone", "window", "zone", "items"):
        del item["data"][key]
    del item["data"]["address"]["line1"]
    assert one(post_events, item)["errors"] == {"data.address.line1": "This field is required."}
    item["data"]["address"]["line1"] = "1 Main St"
    item["id"] = next_id()
    assert one(post_events, item)["result"] == "accepted"
    delivery = Delivery.objects.get()
    assert (delivery.locale, delivery.phone, delivery.timezone, delivery.items) == ("en", "", "UTC", None)


def test_a_status_without_driver_and_a_ping_without_optional_fields_are_accepted(post_events):
    one(post_events, upserted("ORD-OPT"))
    assert one(post_events, status("ORD-OPT", "scheduled"))["result"] == "accepted"
    assert one(post_events, ping("drv_opt"))["result"] == "accepted"
    assert Driver.objects.get(external_id="drv_opt").heading is None


@pytest.mark.parametrize("kind", ["JPEG", "PNG"])
def test_a_real_photo_of_either_type_is_stored_with_its_content_type(post_events, kind):
    one(post_events, upserted("ORD-PH"))
    content = image_bytes(kind, (40, 30))
    assert one(post_events, proof("ORD-PH", photo=data_url(kind, content)))["result"] == "accepted"
    stored = DeliveryProof.objects.get()
    assert (bytes(stored.photo), stored.photo_content_type) == (content, f"image/{kind.lower()}")


def test_a_photo_just_under_512_kib_is_accepted(post_events):
    import io
    import random

    from PIL import Image

    noise = random.Random(1).randbytes(416 * 418 * 3)  # incompressible: the PNG is about as big
    buffer = io.BytesIO()
    Image.frombytes("RGB", (416, 418), noise).save(buffer, "PNG")
    content = buffer.getvalue()
    assert 500 * 1024 < len(content) <= 512 * 1024
    one(post_events, upserted("ORD-BIG"))
    assert one(post_events, proof("ORD-BIG", photo=data_url("PNG", content)))["result"] == "accepted"


def test_a_proof_may_carry_only_a_photo_url_or_both(post_events):
    one(post_events, upserted("ORD-URLP"))
    only_url = {"reference": "ORD-URLP", "photo_url": "https://cdn.example.com/p/1.jpg"}
    assert one(post_events, event("delivery.proof", only_url, occurred_at=at(5)))["result"] == "accepted"
    both = proof("ORD-URLP", minutes=6, photo=data_url("PNG"), photo_url="https://cdn.example.com/p/2.jpg")
    assert one(post_events, both)["result"] == "accepted"
    stored = DeliveryProof.objects.get()
    assert stored.photo_url.endswith("/2.jpg") and bytes(stored.photo).startswith(b"\x89PNG")
