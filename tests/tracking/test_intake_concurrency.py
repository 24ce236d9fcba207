"""The intake under concurrency, against a real daphne on PostgreSQL: W1's duplicate storm,
identical POSTs racing, overlapping batches, and events racing their delivery's upsert."""

from __future__ import annotations

import json
import random
import statistics
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.conf import settings

from bench.common import Request, load
from tests.services import daphne
from tests.tracking.intake_events import eta, next_id, ping, proof, status, upserted
from tracking import signing
from tracking.models import Delivery, InboundEvent, LocationPing

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    with django_db_blocker.unblock(), daphne() as url:
        yield url


def signed(document: Any) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(document).encode()
    secret = settings.PORCHLIGHT_ROUTING_SECRETS[0]
    return body, {"Content-Type": "application/json", signing.HEADER: signing.sign(secret=secret, body=body)}


def post(url: str, document: Any) -> httpx.Response:
    body, headers = signed(document)
    return httpx.post(f"{url}/api/v1/events", content=body, headers=headers, timeout=60)


def all_at_once(jobs: list[Any]) -> list[Any]:
    """Run the callables on as many threads, released together by a barrier."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = jobs[index]()
        except Exception as error:  # reported by the assertions below, not lost in a thread
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def test_duplicate_delivery_storm(server):
    """W1: 1000 identical signed deliveries over 50 connections: 1 row, 1000 2xx."""
    # A control delivery gets the same status once: the storm must cause exactly what one
    # application causes (notification rows included, whatever the notification rules are).
    for reference in ("ORD-W1", "ORD-W1-control"):
        assert post(server, upserted(reference, id=f"{reference}-up")).status_code == 200
    assert post(server, status("ORD-W1-control", "out_for_delivery")).status_code == 200
    body, headers = signed(status("ORD-W1", "out_for_delivery", id="evt_w1"))
    # The storm comes from the bench's load client in its own process: a plain asyncio client
    # costs a fraction of httpx per request, so the figure is the server's, not the client's
    # (httpx in this process took a core of the two and gave 147/s, p95 910 ms).
    storm = load(
        [server],
        [Request("POST", "/api/v1/events", headers, body)] * 1000,
        concurrency=50,
        client="python",
        keep_bodies=True,
    )
    p50, p95, p99 = (storm.p(q) for q in (50, 95, 99))
    outcomes = Counter(json.loads(answer)["results"][0]["result"] for answer in storm.bodies)
    print(f"\nW1: 1000 requests in {storm.elapsed:.1f} s ({storm.rps:.0f}/s); ack p50 {p50:.0f} ms, "
          f"p95 {p95:.0f} ms, p99 {p99:.0f} ms; codes {dict(storm.statuses)}; "
          f"results {dict(outcomes)}")  # fmt: skip
    assert storm.statuses == {200: 1000} and storm.errors == {}
    assert outcomes == {"accepted": 1, "duplicate": 999}
    assert InboundEvent.objects.filter(event_id="evt_w1").count() == 1
    delivery, control = (Delivery.objects.get(reference=r) for r in ("ORD-W1", "ORD-W1-control"))
    assert delivery.status == control.status == "out_for_delivery"
    notifications = (delivery.notifications.count(), control.notifications.count())
    print(f"W1: notification rows storm/control {notifications}")
    assert notifications[0] == notifications[1] >= 1
    # The plan's target is 250 ms: measured 184-202 ms on a quiet 2-core machine (one daphne,
    # about 360/s). Machines here are shared and swing 2x, so the bound catches a pathology,
    # such as duplicates queueing on a lock, and the figure is printed above and in make bench.
    assert p95 < 1_000


def test_concurrent_single_events_share_transactions_and_each_request_gets_its_own_results(server):
    """Group commit: single events arriving together are applied in shared transactions
    (one received_at per transaction), and every answer is exactly its own request's."""
    references = [f"ORD-GC-{n}" for n in range(16)]
    assert post(server, {"events": [upserted(r) for r in references]}).status_code == 200
    events = [status(r, "out_for_delivery", driver={"id": "drv_gc"}) for r in references]
    events += [eta(r, minutes=30) for r in references]
    events += [ping(f"drv_gc_{n}") for n in range(16)]

    responses = all_at_once([lambda e=e: post(server, e) for e in events])

    assert [getattr(r, "status_code", r) for r in responses] == [200] * len(events)
    for event, response in zip(events, responses, strict=True):
        assert response.json()["results"] == [{"id": event["id"], "result": "accepted"}]
    rows = InboundEvent.objects.filter(event_id__in=[e["id"] for e in events])
    assert sorted(rows.values_list("result", flat=True)) == ["accepted"] * len(events)
    assert set(Delivery.objects.filter(reference__in=references).values_list("status", flat=True)) == {
        "out_for_delivery"
    }
    transactions = rows.values("received_at").distinct().count()
    print(f"\ngroup commit: {len(events)} concurrent requests in {transactions} transactions")
    assert transactions < len(events)


def test_16_concurrent_identical_posts_leave_exactly_one_row_per_event_id(server):
    for round_ in range(5):
        reference = f"ORD-16-{round_}"
        batch = {"events": [upserted(reference), status(reference, "arriving", minutes=5),
                            ping(f"drv_16_{round_}"),
                            proof(reference, minutes=9)]}  # fmt: skip
        ids = [e["id"] for e in batch["events"]]
        responses = all_at_once([lambda batch=batch: post(server, batch)] * 16)
        assert [getattr(r, "status_code", r) for r in responses] == [200] * 16
        per_id = Counter((r["id"], r["result"]) for response in responses for r in response.json()["results"])
        for event_id in ids:
            assert per_id[(event_id, "accepted")] == 1 and per_id[(event_id, "duplicate")] == 15
        assert InboundEvent.objects.filter(event_id__in=ids).count() == len(ids)
        assert Delivery.objects.filter(reference=reference).count() == 1
        assert LocationPing.objects.filter(driver__external_id=f"drv_16_{round_}").count() == 1
        urls = {
            r["tracking_url"]
            for response in responses
            for r in response.json()["results"]
            if "tracking_url" in r
        }
        assert len(urls) == 1  # every copy, accepted or duplicate, links to the one delivery


def test_concurrent_batches_with_overlapping_ids_in_different_orders_never_fail(server):
    rng = random.Random(7)
    references = [f"ORD-OV-{i}" for i in range(5)]
    shared = [upserted(r) for r in references]
    shared += [
        status(r, s, minutes=m, driver={"id": f"drv_ov_{m % 3}"})
        for r in references
        for m, s in ((2, "scheduled"), (4, "out_for_delivery"), (6, "arriving"))
    ]
    shared += [ping(f"drv_ov_{i % 3}", minutes=i) for i in range(10)]  # fmt: skip
    batches = []
    for _ in range(12):
        # Part shared ids (claimed in the same order whatever the batch order), part own ids
        # touching the same deliveries and drivers in another order (the locks' order).
        own = [
            status(r, "arriving", minutes=rng.randint(1, 9), driver={"id": f"drv_ov_{rng.randint(0, 2)}"})
            for r in references
        ]
        mine = rng.sample(shared, 25) + own
        rng.shuffle(mine)
        batches.append({"events": mine})
    responses = all_at_once([lambda b=b: post(server, b) for b in batches])
    assert [getattr(r, "status_code", r) for r in responses] == [200] * 12
    applied = Counter(
        r["id"] for response in responses for r in response.json()["results"] if r["result"] != "duplicate"
    )
    assert set(applied.values()) == {1}  # each id applied by exactly one request
    ids = {e["id"] for b in batches for e in b["events"]}
    assert InboundEvent.objects.filter(event_id__in=ids).count() == len(ids)
    assert not InboundEvent.objects.filter(event_id__in=ids, result="pending").exists()


def test_an_event_racing_its_deliverys_upsert_is_never_left_pending(server):
    for round_ in range(15):
        reference = f"ORD-RACE-{round_}"
        early = status(reference, "arriving", minutes=5)
        late = upserted(reference)
        responses = all_at_once([lambda e=early: post(server, e), lambda u=late: post(server, u)])
        assert [getattr(r, "status_code", r) for r in responses] == [200, 200]
        assert responses[0].json()["results"][0]["result"] in ("pending", "accepted")
        row = InboundEvent.objects.get(event_id=early["id"])
        assert row.result == "accepted", f"round {round_}: left {row.result}"
        assert Delivery.objects.get(reference=reference).status == "arriving"


def test_a_chunked_body_over_1_mib_with_no_content_length_is_413(server):
    body, headers = signed(upserted(note="x" * (1024 * 1024 + 10)))

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    response = httpx.post(f"{server}/api/v1/events", content=chunks(), headers=headers, timeout=60)
    assert (response.status_code, response.json()["error"]) == (413, "payload_too_large")
    small, small_headers = signed(upserted("ORD-CHUNK", id=next_id()))
    response = httpx.post(
        f"{server}/api/v1/events", content=iter([small[:10], small[10:]]), headers=small_headers
    )
    assert response.status_code == 200 and response.json()["results"][0]["result"] == "accepted"
