"""`python manage.py simulate`: a routing backend driving the demo deliveries, over HTTP only.

Every tick (about a second) it sends one signed batch to `POST /api/v1/events`: each driver's
position, plus whatever happened since the last tick (statuses, ETAs, proofs). Simulated time
runs `--speed` times faster than life; timestamps are real, so the pages read naturally.
It never touches the database: what it knows about Porchlight comes from the responses.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tracking import demo
from tracking.signing import HEADER, sign

MAX_BATCH = 500  # the contract's limit per request
MAX_BACKLOG = 5000  # delivery events kept for a server that is down; the oldest go first
TIMEOUT = 10.0
MIN_WINDOW_SPREAD = 60.0  # real seconds either side of an ETA
# Worth trying again as they are: the server is restarting, overloaded or (401) being rekeyed.
RETRYABLE = frozenset({401, 408, 425, 429, 500, 502, 503, 504})


@dataclass
class Stats:
    ticks: int = 0
    requests: int = 0
    answered_200: int = 0
    failed: int = 0
    results: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        results = ", ".join(f"{name} {count}" for name, count in sorted(self.results.items())) or "none"
        return (
            f"simulate: {self.ticks} ticks, {self.requests} requests, {self.answered_200} answered 200, "
            f"{self.failed} failed; results: {results}"
        )


class Simulator:
    def __init__(
        self, *, url: str, secret: str, speed: float, interval: float, pace: bool, seed: int,
        write: Any, session: requests.Session | None = None,
    ) -> None:  # fmt: skip
        self.endpoint = url.rstrip("/") + "/api/v1/events"
        self.base = url.rstrip("/")
        self.secret = secret
        self.speed = speed
        self.interval = interval
        self.pace = pace
        self.seed = seed
        self.write = write
        self.session = session or requests.Session()
        self.stats = Stats()
        self.run_id = secrets.token_hex(4)  # event ids stay unique across runs of the simulator
        self.counter = 0
        self.rng = random.Random(seed)
        self.backlog: list[dict[str, Any]] = []
        self.links_shown = False
        self.upserts: dict[str, str] = {}  # event id -> reference, to label the links we get back
        self.failing_since: float | None = None
        self.last_problem = ""
        self.plan = demo.day_plan(0, seed=seed)
        self.happenings = self.plan.happenings()
        self.t: float | None = None  # simulated seconds into the day; None before its first tick
        self.real: datetime = datetime.now(UTC)

    # --- the loop ---------------------------------------------------------------------

    def run(self, *, ticks: int | None, wait: float | None) -> Stats:
        self.wait_for_server(wait)
        next_tick = time.monotonic()
        while ticks is None or self.stats.ticks < ticks:
            self.tick()
            if self.pace:
                # On a fixed schedule, so slow requests do not make the day drift; but after an
                # outage, carry on from now rather than fire the missed ticks in a burst.
                next_tick = max(next_tick + self.interval, time.monotonic())
                time.sleep(max(0.0, next_tick - time.monotonic()))
        return self.stats

    def wait_for_server(self, wait: float | None) -> None:
        deadline = None if wait is None else time.monotonic() + wait
        delay, told = 0.2, False
        while True:
            try:
                self.session.get(self.base + "/healthz", timeout=TIMEOUT)
                return  # any answer at all: the server is up
            except requests.RequestException:
                pass
            if deadline is not None and time.monotonic() >= deadline:
                self.write(f"{self.base} does not answer; going on anyway")
                return
            if not told:
                self.write(f"waiting for {self.base} ...")
                told = True
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def tick(self) -> None:
        now = datetime.now(UTC)
        previous_t, previous_real = self.t, self.real
        step = self.speed * self.interval
        t = 0.0 if previous_t is None else previous_t + step
        if t >= self.plan.length:
            self.plan = demo.day_plan(self.plan.day + 1, seed=self.seed)
            self.happenings = self.plan.happenings()
            self.write(
                f"day {self.plan.day + 1} starts: {len(demo.ROUTED)} deliveries, {len(demo.DRIVERS)} drivers"
            )
            previous_t, t = None, 0.0

        def real_time(at: float) -> datetime:
            # Between the two ticks in proportion, so events keep their order and spacing.
            if previous_t is None or t == previous_t:
                return now
            return previous_real + (now - previous_real) * ((at - previous_t) / (t - previous_t))

        for happening in self.happenings:
            if (previous_t is None and happening.at == 0.0) or (
                previous_t is not None and previous_t < happening.at <= t
            ):
                occurred = real_time(happening.at) + timedelta(microseconds=happening.order)
                self.backlog.append(self.event_for(happening, occurred))
        pings = [self.ping(route, t, now) for route in self.plan.routes if t <= route.end]
        self.t, self.real = t, now
        self.stats.ticks += 1
        self.send(pings)

    # --- events -----------------------------------------------------------------------

    def next_id(self) -> str:
        self.counter += 1
        return f"sim-{self.run_id}-{self.counter}"

    def event_for(self, happening: demo.Happening, occurred: datetime) -> dict[str, Any]:
        reference = happening.reference
        delivery = demo.BY_REFERENCE[reference]
        if happening.kind == "upserted":
            route = self.plan.route_of(reference)
            eta = self.to_real(route.predicted_arrival(reference, 0.0), at=0.0, real=occurred)
            spread = max(timedelta(minutes=2), (eta - occurred) / 2)
            window = _minutes(max(occurred, eta - spread), eta + spread)
            event = demo.upserted_event(
                delivery, event_id=self.next_id(), occurred_at=occurred, window=window
            )
            self.upserts[event["id"]] = reference
            return event
        if happening.kind == "status":
            if happening.status in ("out_for_delivery", "delivered", "attempt_failed"):
                who = f" with {happening.driver.name}" if happening.driver else ""
                why = f" ({happening.reason})" if happening.reason else ""
                self.write(f"{occurred.astimezone():%H:%M:%S} {reference} {happening.status}{who}{why}")
            event_id = self.next_id()
            if self.plan.day == 0 and happening.status == "scheduled":
                # demo_data already said so under this id: a duplicate, not a second "Scheduled"
                # in the page's timeline.
                event_id = demo.seed_event_id(reference, "scheduled")
            return demo.status_event(
                reference, happening.status, event_id=event_id, occurred_at=occurred,
                driver=happening.driver, reason=happening.reason,
            )  # fmt: skip
        if happening.kind == "eta":
            route = self.plan.route_of(reference)
            predicted = route.predicted_arrival(reference, happening.at)
            eta = self.to_real(predicted, at=happening.at, real=occurred)
            # The window narrows as the stop gets closer, but stays wide enough to read as a
            # range of clock minutes however fast the day runs.
            lead = max(demo.ETA_MIN_SPREAD, (predicted - happening.at) / 4) / self.speed
            spread = timedelta(seconds=max(MIN_WINDOW_SPREAD, lead))
            return demo.eta_event(
                reference, event_id=self.next_id(), occurred_at=occurred, eta=eta,
                window=(eta - spread, eta + spread),
                stops_before=route.stops_before(reference, happening.at),
            )  # fmt: skip
        return demo.proof_event(delivery, event_id=self.next_id(), occurred_at=occurred)

    def to_real(self, simulated: float, *, at: float, real: datetime) -> datetime:
        return real + timedelta(seconds=(simulated - at) / (self.speed or 1.0))

    def ping(self, route: demo.RoutePlan, t: float, now: datetime) -> dict[str, Any]:
        point, heading, speed = route.position(t)
        return demo.location_event(
            route.driver.id, event_id=self.next_id(), point=point, heading=heading, speed_mps=speed,
            accuracy_m=self.rng.uniform(3.0, 12.0), recorded_at=now,
        )  # fmt: skip

    # --- HTTP -------------------------------------------------------------------------

    def send(self, pings: list[dict[str, Any]]) -> None:
        if len(self.backlog) > MAX_BACKLOG:
            self.problem(f"backlog over {MAX_BACKLOG} events: dropping the oldest")
            del self.backlog[: len(self.backlog) - MAX_BACKLOG]
        held = self.backlog[: MAX_BATCH - len(pings)]
        batch = held + pings
        if not batch:
            return
        body = json.dumps({"events": batch}, separators=(",", ":")).encode()
        self.stats.requests += 1
        try:
            response = self.session.post(
                self.endpoint,
                data=body,
                headers={"Content-Type": "application/json", HEADER: sign(secret=self.secret, body=body)},
                timeout=TIMEOUT,
            )
        except requests.RequestException as error:
            # Pings are only worth their freshness; delivery events wait for the server.
            self.stats.failed += 1
            self.problem(f"server unreachable ({type(error).__name__}); retrying")
            return
        if response.status_code != 200:
            self.stats.failed += 1
            if response.status_code in RETRYABLE:
                self.problem(f"HTTP {response.status_code} {_error_of(response)}; retrying")
            else:
                self.problem(
                    f"HTTP {response.status_code} {_error_of(response)}; dropping {len(held)} events"
                )
                del self.backlog[: len(held)]
            return
        try:
            results = response.json()["results"]
        except (ValueError, KeyError, TypeError):
            results = None
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            self.stats.failed += 1
            self.problem("a 200 without results; retrying")
            return
        self.stats.answered_200 += 1
        del self.backlog[: len(held)]
        self.recovered()
        self.read_results(results)

    def read_results(self, results: list[dict[str, Any]]) -> None:
        for result in results:
            self.stats.results[str(result.get("result"))] += 1
            if result.get("result") == "rejected":
                self.write(f"rejected {result.get('id')}: {result.get('errors')}")
        links = [(self.upserts.get(r["id"], ""), r["tracking_url"]) for r in results if "tracking_url" in r]
        if links and not self.links_shown:
            self.links_shown = True
            self.write("today's route, live:")
            for reference, link in links:
                self.write(f"  {reference:<10} {link}")

    def problem(self, message: str) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        if message != self.last_problem:  # brief: once per kind of trouble, not per tick
            self.write(message)
            self.last_problem = message

    def recovered(self) -> None:
        if self.failing_since is not None:
            self.write(f"server answering again after {time.monotonic() - self.failing_since:.0f} s")
        self.failing_since, self.last_problem = None, ""


def _minutes(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """A window as people say it: out to whole minutes."""
    floor = start.replace(second=0, microsecond=0)
    ceil = end.replace(second=0, microsecond=0) + (
        timedelta(minutes=1) if end.second or end.microsecond else timedelta()
    )
    return floor, ceil


def _error_of(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", ""))
    except (ValueError, AttributeError):
        return ""


class Command(BaseCommand):
    help = (
        "Act as the routing backend: drive the demo deliveries through the signed HTTP intake until stopped."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default=settings.PORCHLIGHT_PUBLIC_URL, help="Porchlight's base URL.")
        parser.add_argument(
            "--secret",
            default=None,
            help="Signing secret (default: the first of PORCHLIGHT_ROUTING_SECRETS).",
        )
        parser.add_argument(
            "--speed",
            type=float,
            default=10.0,
            help="Time factor: simulated seconds per real second (default 10).",
        )
        parser.add_argument("--interval", type=float, default=1.0, help="Real seconds per tick (default 1).")
        parser.add_argument(
            "--ticks", type=int, default=None, help="Stop after N ticks (default: run until Ctrl-C)."
        )
        parser.add_argument("--once", action="store_true", help="One tick, then stop.")
        parser.add_argument(
            "--fast",
            action="store_true",
            help="Send the ticks back to back instead of one per interval (tests).",
        )
        parser.add_argument(
            "--wait", type=float, default=None, help="Seconds to wait for the server (default: forever)."
        )
        parser.add_argument("--seed", type=int, default=7, help="Seed for traffic and GPS noise.")

    def handle(self, *args: Any, **options: Any) -> None:
        secret = options["secret"] or next(iter(settings.PORCHLIGHT_ROUTING_SECRETS), "")
        if not secret:
            raise CommandError("No signing secret: pass --secret or set PORCHLIGHT_ROUTING_SECRETS.")
        if options["speed"] <= 0 or options["interval"] < 0:
            raise CommandError("--speed must be positive and --interval not negative.")
        ticks = 1 if options["once"] else options["ticks"]
        simulator = Simulator(
            url=options["url"], secret=secret, speed=options["speed"], interval=options["interval"] or 1.0,
            pace=not options["fast"] and bool(options["interval"]), seed=options["seed"], write=self._write,
        )  # fmt: skip
        self._write(
            f"simulating {len(demo.DRIVERS)} drivers, {len(demo.ROUTED)} deliveries: "
            f"{simulator.endpoint}, {options['speed']:g}x real time"
        )
        try:
            simulator.run(ticks=ticks, wait=options["wait"])
        except KeyboardInterrupt:
            self._write("stopped")
        self._write(simulator.stats.summary())

    def _write(self, message: str) -> None:
        self.stdout.write(message)
        self.stdout.flush()
