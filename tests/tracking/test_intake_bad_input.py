"""Bad input beside a good event: every field, unicode and very long text, and the
optional fields and photos that must still be accepted."""

# The tables of cases read best one case per line.
# ruff: noqa: E501

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

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
from tests.tracking.test_intake import one, post_raw, results_of
from tracking.models import Delivery, DeliveryProof, Driver, InboundEvent, LocationPing

pytestmark = pytest.mark.django_db

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


def test_brackets_and_escapes_inside_text_are_kept_exactly_and_do_not_count_as_nesting(post_events):
    # The depth check only walks the payload when its JSON text holds more than 32 brackets;
    # brackets inside strings count there, and must not get a shallow event rejected.
    tricky = '[{"a": [' * 20 + ' \\u0000 \\\\u0000 "quoted" ' + UNICODE
    item = upserted("ORD-BRACKETS", zone="north", extra={"note": tricky, "deep": [[[[1]]]]})
    result = one(post_events, item)
    assert result["result"] == "accepted", result
    assert InboundEvent.objects.get(event_id=item["id"]).payload == item


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
