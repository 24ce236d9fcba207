"""The demo commands: `demo_data` (idempotent seed through the intake) and `simulate` (a routing
backend that only speaks signed HTTP)."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import override_settings

from tests.services import daphne, free_port
from tracking import demo
from tracking.events import parse_event, parse_timestamp
from tracking.models import Delivery, DeliveryProof, Driver, InboundEvent, LocationPing

LINK = re.compile(r"(ORD-\d+)\s.*?(https?://\S+/t/([A-Za-z0-9_-]+)/)")
SUMMARY = re.compile(
    r"simulate: (\d+) ticks, (\d+) requests, (\d+) answered 200, (\d+) failed; results: (.*)"
)


def run(command: str, *args: str) -> str:
    out = io.StringIO()
    call_command(command, *args, stdout=out)
    return out.getvalue()


def summary_of(output: str) -> dict[str, Any]:
    match = SUMMARY.search(output)
    assert match, output
    ticks, requests, ok, failed, results = match.groups()
    counts = dict(re.findall(r"(\w+) (\d+)", results))
    return {"ticks": int(ticks), "requests": int(requests), "ok": int(ok), "failed": int(failed), **counts}


# --- demo_data --------------------------------------------------------------------------


@pytest.mark.django_db
def test_demo_data_run_twice_gives_the_same_deliveries_and_the_same_links():
    first = run("demo_data")
    events = InboundEvent.objects.count()
    second = run("demo_data")

    links = LINK.findall(first)
    assert len(links) == len(demo.DELIVERIES) == Delivery.objects.count() == 8
    assert LINK.findall(second) == links
    assert InboundEvent.objects.count() == events  # the second run was all duplicates
    drivers = Driver.objects.order_by("external_id").values_list("external_id", "name", "vehicle")
    assert list(drivers) == sorted((d.id, d.name, d.vehicle) for d in demo.DRIVERS)
    for reference, url, token in links:
        delivery = Delivery.objects.get(reference=reference)
        assert delivery.tracking_token == token
        assert url == f"http://testserver/t/{token}/"


@pytest.mark.django_db
def test_demo_data_covers_both_languages_both_zones_and_customers_who_still_pick_a_slot():
    output = run("demo_data")
    deliveries = list(Delivery.objects.all())
    assert {d.locale.split("-")[0] for d in deliveries} == {"en", "es"}
    assert {d.zone_code for d in deliveries} == set(demo.ZONES)
    assert all(d.phone or d.email for d in deliveries)
    waiting = {d.reference for d in deliveries if d.window_start is None}
    assert waiting == {"ORD-10051", "ORD-10058"}
    assert {d.status for d in deliveries if d.reference in waiting} == {"created"}
    assert {d.status for d in deliveries if d.reference not in waiting} == {"scheduled"}
    assert "Order received" in output and "Scheduled" in output


@pytest.mark.django_db
def test_demo_data_creates_the_admin_admin_superuser_in_debug_only_and_only_once():
    users = get_user_model()
    output = run("demo_data")
    assert not users.objects.exists()
    assert "createsuperuser" in output

    with override_settings(DEBUG=True):
        output = run("demo_data")
        run("demo_data")
    admin = users.objects.get()
    assert admin.username == "admin" and admin.is_superuser and admin.check_password("admin")
    assert "http://testserver/admin/ (user admin, password admin" in output


# --- the simulated day, without HTTP ----------------------------------------------------


def test_every_event_of_a_simulated_day_is_valid_under_the_contract():
    from tracking.management.commands.simulate import Simulator

    simulator = Simulator(
        url="http://x", secret="s", speed=600, interval=1, pace=False, seed=1, write=lambda _: None
    )
    now = simulator.real
    events = [simulator.event_for(h, now) for h in simulator.happenings]
    events += [simulator.ping(route, t, now) for route in simulator.plan.routes for t in (0, 900, 1800)]
    for event in events:
        parse_event(event)  # raises Invalid with the field errors otherwise
    assert {e["type"] for e in events} == {
        "delivery.upserted", "delivery.status", "delivery.eta", "driver.location", "delivery.proof",
    }  # fmt: skip


def test_eta_windows_narrow_as_the_driver_gets_closer():
    from tracking.management.commands.simulate import Simulator

    simulator = Simulator(
        url="http://x", secret="s", speed=1, interval=1, pace=False, seed=1, write=lambda _: None
    )
    now = simulator.real
    etas = [
        simulator.event_for(h, now)["data"]
        for h in simulator.happenings
        if h.reference == "ORD-10023" and h.kind == "eta"
    ]
    widths = [parse_timestamp(e["window"]["end"]) - parse_timestamp(e["window"]["start"]) for e in etas]
    assert widths[0] > widths[-1] and widths == sorted(widths, reverse=True)
    assert etas[0]["stops_before"] == 4 and etas[-1]["stops_before"] == 0


def test_each_driver_reaches_every_stop_and_stops_before_counts_down_to_zero():
    plan = demo.day_plan(0, seed=3)
    for route in plan.routes:
        assert route.position(0)[0] == demo.DEPOT
        for stop in route.stops:
            point, _, speed = route.position(stop.arrive + 1)
            assert demo.distance_m(point, stop.point) < 1 and speed == 0
        for reference in [s.reference for s in route.stops if s.reference]:
            counts = [
                route.stops_before(reference, t) for t in range(0, int(route.stop_of(reference).arrive), 60)
            ]
            assert counts == sorted(counts, reverse=True) and counts[-1] == 0
        assert route.position(route.end)[0] == demo.DEPOT


def test_statuses_progress_in_order_and_one_first_attempt_fails_with_a_reason():
    first, second = demo.day_plan(0, seed=3), demo.day_plan(1, seed=3)
    for plan in (first, second):
        for delivery in demo.ROUTED:
            statuses = [
                h for h in plan.happenings() if h.reference == delivery.reference and h.kind == "status"
            ]
            last = "attempt_failed" if plan.fails(delivery.reference) else "delivered"
            assert [h.status for h in statuses] == ["scheduled", "out_for_delivery", "arriving", last]
    failed = [h for h in first.happenings() if h.status == "attempt_failed"]
    assert [(h.reference, h.reason) for h in failed] == [("ORD-10045", demo.FAILED_REASON)]
    assert not [h for h in second.happenings() if h.status == "attempt_failed"]


# --- simulate against a real server -----------------------------------------------------


def assert_the_day_was_driven(output: str, *, ticks: int) -> None:
    summary = summary_of(output)
    # A tick with nothing to say (every driver back at the depot) sends no request.
    assert summary["ticks"] == ticks and summary["requests"] == summary["ok"] >= ticks - 2, output
    assert summary["failed"] == 0 and "rejected" not in summary, output
    assert not InboundEvent.objects.filter(result="rejected").exists()
    # Every driver moved: many distinct positions, and a heading while driving.
    for driver in Driver.objects.filter(external_id__in=[d.id for d in demo.DRIVERS]):
        positions = set(LocationPing.objects.filter(driver=driver).values_list("lat", "lon"))
        assert len(positions) >= 3, driver
        assert driver.name and driver.vehicle
    # The first day ran to its end: delivered with a photo, or failed with a reason.
    for delivery in demo.ROUTED:
        statuses = list(
            InboundEvent.objects.filter(reference=delivery.reference, type="delivery.status")
            .order_by("occurred_at")
            .values_list("payload__data__status", flat=True)
        )
        end = "attempt_failed" if delivery.fails_first_attempt else "delivered"
        day = ["scheduled", "out_for_delivery", "arriving", end]
        assert any(statuses[i : i + 4] == day for i in range(len(statuses))), (delivery.reference, statuses)
    assert DeliveryProof.objects.filter(photo_content_type="image/png").count() == len(demo.ROUTED) - 1
    failed = InboundEvent.objects.get(payload__data__status="attempt_failed")
    assert failed.payload["data"]["reason"] == demo.FAILED_REASON
    # ETAs came with narrowing windows and a countdown of stops.
    etas = InboundEvent.objects.filter(reference="ORD-10023", type="delivery.eta").order_by("occurred_at")
    stops = [e.payload["data"]["stops_before"] for e in etas]
    assert max(stops) >= 4 and 0 in stops
    for eta in etas:
        data = eta.payload["data"]
        assert data["window"]["start"] < data["eta"] < data["window"]["end"]
    assert "day 2 starts" in output


@pytest.mark.django_db(transaction=True)
def test_simulate_drives_a_whole_day_through_the_http_intake(live_server):
    run("demo_data")
    # 600 simulated seconds a tick: the first day (about an hour) ends and the second begins.
    output = run("simulate", "--url", live_server.url, "--ticks", "8", "--speed", "600", "--fast")
    assert_the_day_was_driven(output, ticks=8)
    links = LINK.findall(output.split("today's route, live:")[1])
    assert len(links) == len(demo.ROUTED)
    assert all(Delivery.objects.get(reference=ref).tracking_token == token for ref, _, token in links)
    assert "ORD-10045 attempt_failed" in output
    # The first day's "scheduled" was demo_data's (a duplicate); the second day's is new.
    assert InboundEvent.objects.filter(payload__data__status="scheduled").count() == 2 * len(demo.ROUTED)

    # demo_data again (a second `make run`) leaves what the simulator did alone.
    before = dict(Delivery.objects.values_list("reference", "status"))
    run("demo_data")
    assert dict(Delivery.objects.values_list("reference", "status")) == before


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_simulate_drives_a_whole_day_through_daphne():
    run("demo_data")
    with daphne() as url:
        output = run("simulate", "--url", url, "--ticks", "8", "--speed", "600", "--fast", "--wait", "10")
    assert_the_day_was_driven(output, ticks=8)


@pytest.mark.django_db(transaction=True)
def test_simulate_keeps_going_when_every_request_is_refused_with_401(live_server):
    output = run("simulate", "--url", live_server.url, "--secret", "not-the-secret", "--ticks", "3", "--fast")
    summary = summary_of(output)
    assert summary["requests"] == summary["failed"] == 3 and summary["ok"] == 0
    assert output.count("HTTP 401 invalid_signature; retrying") == 1  # said once, not every tick
    assert not Delivery.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_simulate_survives_a_server_that_is_not_there_and_catches_up_when_it_answers(live_server):
    from tracking.management.commands.simulate import Simulator

    lines: list[str] = []
    simulator = Simulator(
        url=f"http://127.0.0.1:{free_port()}", secret="test-routing-secret", speed=600, interval=1,
        pace=False, seed=1, write=lines.append,
    )  # fmt: skip
    simulator.run(ticks=2, wait=0)
    assert simulator.stats.failed == 2 and simulator.backlog  # kept for later, not lost
    assert sum("unreachable" in line for line in lines) == 1

    simulator.base = live_server.url
    simulator.endpoint = live_server.url + "/api/v1/events"
    simulator.run(ticks=3, wait=0)
    assert simulator.stats.answered_200 == 1 and not simulator.backlog
    assert any(line.startswith("server answering again") for line in lines)
    # The events held back during the outage arrived whole and in their order: none stale.
    assert Delivery.objects.filter(reference__in=[d.reference for d in demo.ROUTED]).count() == 6
    assert Delivery.objects.get(reference="ORD-10038").status == "delivered"
    assert not InboundEvent.objects.exclude(result="accepted").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--speed", "0"), "--speed must be positive"),
        (("--interval", "-1"), "--interval not negative"),
    ],
)
def test_simulate_refuses_nonsense_options_with_a_clear_error(args, message):
    with pytest.raises(CommandError, match=message):
        run("simulate", *args, "--once")


def test_simulate_needs_a_secret_to_sign_with(settings):
    settings.PORCHLIGHT_ROUTING_SECRETS = []
    with pytest.raises(CommandError, match="No signing secret"):
        run("simulate", "--once")
