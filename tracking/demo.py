"""The demo city: Laredo's deliveries, drivers and their day, for `demo_data` and `simulate`.

Pure data, geometry and contract-shaped events: nothing here touches the database or the
network, so the simulator stays an ordinary HTTP client of the intake.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
import random
import zlib
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from geopy.distance import geodesic

CITY = "Laredo"
COUNTRY = "US"
TIMEZONE = "America/Chicago"
ZONES = ("laredo-central", "laredo-north")

NOMINAL_SPEED_MPS = 11.0  # about 40 km/h through town: what routing plans with
LOAD_SECONDS = 180.0  # at the depot before leaving
DWELL_SECONDS = 120.0  # at each stop
ARRIVING_SECONDS = 300.0  # "arriving" once the stop is this close (or next, if nearer)
ETA_EVERY_SECONDS = 120.0  # a fresh ETA this often while on the way
ETA_MIN_SPREAD = 120.0  # an ETA window is at least the ETA plus or minus this
REST_SECONDS = 600.0  # after the last driver is back, before the next day starts
FAILED_REASON = "No one home, no safe place"


@dataclass(frozen=True)
class Point:
    lat: float
    lon: float


@dataclass(frozen=True)
class DemoDelivery:
    reference: str
    name: str
    line1: str
    postcode: str
    point: Point
    zone: str
    phone: str = ""
    email: str = ""
    locale: str = "en"
    line2: str = ""
    items: int = 1
    # Local hour the promised two-hour window starts; None: no slot yet, the customer picks one.
    window_hour: int | None = None
    fails_first_attempt: bool = False


@dataclass(frozen=True)
class DemoDriver:
    id: str
    name: str
    vehicle: str
    # In route order: a demo delivery's reference, or another customer's stop (not on Porchlight).
    route: tuple[str | Point, ...]

    def as_contract(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "vehicle": self.vehicle}


DEPOT = Point(27.5790, -99.4960)  # a warehouse off Mines Rd / I-35

DELIVERIES: tuple[DemoDelivery, ...] = (
    DemoDelivery("ORD-10023", "Ana García", "1201 Matamoros St", "78040", Point(27.5036, -99.5075),
                 "laredo-central", phone="+19565550123", email="ana@example.com", locale="es", items=2,
                 window_hour=10),
    DemoDelivery("ORD-10031", "Robert Chen", "2302 San Bernardo Ave", "78040", Point(27.5210, -99.5017),
                 "laredo-central", email="robert.chen@example.com", window_hour=10),
    DemoDelivery("ORD-10045", "Marisol Treviño", "3019 Cedar Ave", "78040", Point(27.5225, -99.4870),
                 "laredo-central", phone="+19565550145", locale="es", items=3, window_hour=12,
                 fails_first_attempt=True),
    DemoDelivery("ORD-10038", "Grace Okafor", "4102 McPherson Rd", "78041", Point(27.5470, -99.4790),
                 "laredo-north", phone="+19565550138", email="grace@example.com", window_hour=10),
    DemoDelivery("ORD-10062", "Luis Hernández", "6210 Springfield Ave", "78041", Point(27.5690, -99.4890),
                 "laredo-north", email="luis.hernandez@example.com", locale="es-MX", window_hour=12),
    DemoDelivery("ORD-10070", "Emily Walker", "902 E Del Mar Blvd", "78041", Point(27.5930, -99.4700),
                 "laredo-north", phone="+19565550170", line2="Apt 12B", items=4, window_hour=14),
    DemoDelivery("ORD-10051", "Jorge Salinas", "1810 Guadalupe St", "78043", Point(27.5050, -99.4850),
                 "laredo-central", phone="+19565550151", email="jorge@example.com", locale="es"),
    DemoDelivery("ORD-10058", "Priya Nair", "7619 Casa Verde Rd", "78041", Point(27.5820, -99.4620),
                 "laredo-north", email="priya.nair@example.com"),
)  # fmt: skip

DRIVERS: tuple[DemoDriver, ...] = (
    DemoDriver("drv_7", "Sam Ortiz", "White van", (
        Point(27.5520, -99.5010), Point(27.5340, -99.5080), "ORD-10031",
        Point(27.5120, -99.5000), "ORD-10023",
    )),
    DemoDriver("drv_12", "Lucía Ramírez", "Grey Transit van", (
        "ORD-10038", Point(27.5380, -99.4700), Point(27.5300, -99.4800),
        Point(27.5260, -99.4930), "ORD-10045",
    )),
    DemoDriver("drv_21", "Dev Patel", "Red pickup", (
        Point(27.5650, -99.4800), "ORD-10062", Point(27.5850, -99.4810), "ORD-10070",
    )),
)  # fmt: skip

BY_REFERENCE = {d.reference: d for d in DELIVERIES}
ROUTED = tuple(d for d in DELIVERIES if d.window_hour is not None)


# --- geometry ---------------------------------------------------------------------------


def distance_m(a: Point, b: Point) -> float:
    return float(geodesic((a.lat, a.lon), (b.lat, b.lon)).meters)


def bearing(a: Point, b: Point) -> float:
    """Initial bearing from a to b in degrees, 0..360 (geopy measures and moves, but has no
    public bearing; on a few kilometres the spherical formula is exact enough)."""
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlon = math.radians(b.lon - a.lon)
    x = math.sin(dlon) * math.cos(lat2)
    y = math.cos(lat1) * math.sin(lat2) - math.sin(lat1) * math.cos(lat2) * math.cos(dlon)
    return (math.degrees(math.atan2(x, y)) + 360.0) % 360.0


def along(a: Point, b: Point, metres: float) -> Point:
    """The point `metres` from a on the way to b."""
    moved = geodesic(meters=metres).destination((a.lat, a.lon), bearing(a, b))
    return Point(round(moved.latitude, 6), round(moved.longitude, 6))


def street_path(a: Point, b: Point, turn_first_north_south: bool) -> list[Point]:
    """a, one corner, b: an L through the street grid rather than across the blocks."""
    corner = Point(b.lat, a.lon) if turn_first_north_south else Point(a.lat, b.lon)
    if min(distance_m(a, corner), distance_m(corner, b)) < 30:
        return [a, b]
    return [a, corner, b]


# --- one driver's day -------------------------------------------------------------------


@dataclass
class Phase:
    start: float  # simulated seconds since the day started
    end: float
    origin: Point
    target: Point  # the same as origin while standing
    speed_mps: float  # 0 while standing
    nominal: float  # how long routing expects this phase to take


@dataclass
class Stop:
    reference: str | None  # None: another customer's stop
    point: Point
    arrive: float
    depart: float
    phase: int  # index of the phase spent at the stop
    leave_previous: float  # when the driver set off towards it


@dataclass
class RoutePlan:
    driver: DemoDriver
    phases: list[Phase] = field(default_factory=list)
    stops: list[Stop] = field(default_factory=list)

    @property
    def leave_depot(self) -> float:
        return LOAD_SECONDS

    @property
    def end(self) -> float:
        return self.phases[-1].end

    def _phase_at(self, t: float) -> tuple[int, Phase]:
        for index, phase in enumerate(self.phases):
            if t < phase.end:
                return index, phase
        return len(self.phases) - 1, self.phases[-1]

    def position(self, t: float) -> tuple[Point, float, float]:
        """Where the driver is at t: point, heading, speed in m/s."""
        index, phase = self._phase_at(t)
        heading = next(
            (bearing(p.origin, p.target) for p in reversed(self.phases[: index + 1]) if p.speed_mps),
            0.0,
        )
        if not phase.speed_mps or t >= phase.end:
            return (phase.target if t >= phase.end else phase.origin), heading, 0.0
        fraction = max(0.0, (t - phase.start) / (phase.end - phase.start))
        point = along(phase.origin, phase.target, fraction * distance_m(phase.origin, phase.target))
        return point, heading, phase.speed_mps

    def stop_of(self, reference: str) -> Stop:
        return next(stop for stop in self.stops if stop.reference == reference)

    def stops_before(self, reference: str, t: float) -> int:
        """Stops the driver still makes before this one (finished ones no longer count)."""
        target = self.stop_of(reference)
        return sum(1 for stop in self.stops if stop.arrive < target.arrive and stop.depart > t)

    def predicted_arrival(self, reference: str, t: float) -> float:
        """What routing predicts at t: the rest of the way at planned speeds and dwells."""
        target = self.stop_of(reference)
        if t >= target.arrive:
            return target.arrive
        index, phase = self._phase_at(t)
        done = (t - phase.start) / (phase.end - phase.start) if t > phase.start else 0.0
        remaining = (1.0 - done) * phase.nominal
        remaining += sum(p.nominal for p in self.phases[index + 1 : target.phase])
        return t + remaining


def route_plan(driver: DemoDriver, *, rng: random.Random) -> RoutePlan:
    """The day as it will really happen: traffic makes each leg a little slower or faster
    than routing's plan, which is what moves the ETAs."""
    plan = RoutePlan(driver=driver)
    plan.phases.append(Phase(0.0, LOAD_SECONDS, DEPOT, DEPOT, 0.0, LOAD_SECONDS))
    here, t = DEPOT, LOAD_SECONDS
    targets = [(stop if isinstance(stop, Point) else BY_REFERENCE[stop].point, stop) for stop in driver.route]
    for leg, (point, stop) in enumerate([*targets, (DEPOT, None)]):
        set_off = t
        traffic = rng.uniform(0.7, 1.15)
        path = street_path(here, point, turn_first_north_south=leg % 2 == 0)
        for origin, target in itertools.pairwise(path):
            metres = distance_m(origin, target)
            speed = NOMINAL_SPEED_MPS * traffic
            plan.phases.append(
                Phase(t, t + metres / speed, origin, target, speed, metres / NOMINAL_SPEED_MPS)
            )
            t += metres / speed
        here = point
        if stop is None:
            break
        reference = stop if isinstance(stop, str) else None
        plan.phases.append(Phase(t, t + DWELL_SECONDS, point, point, 0.0, DWELL_SECONDS))
        plan.stops.append(Stop(reference, point, t, t + DWELL_SECONDS, len(plan.phases) - 1, set_off))
        t += DWELL_SECONDS
    return plan


# --- the whole day, as what happens when ------------------------------------------------


@dataclass(frozen=True)
class Happening:
    """Something the routing backend reports, at `at` simulated seconds into the day."""

    at: float
    order: int  # ties: the order the backend learns them in
    kind: str  # "upserted", "status", "eta", "proof"
    reference: str
    status: str = ""
    reason: str = ""
    driver: DemoDriver | None = None


@dataclass
class DayPlan:
    day: int  # 0 for the simulator's first day
    routes: list[RoutePlan]

    @property
    def end(self) -> float:
        return max(route.end for route in self.routes)

    @property
    def length(self) -> float:
        return self.end + REST_SECONDS

    def route_of(self, reference: str) -> RoutePlan:
        return next(route for route in self.routes if any(s.reference == reference for s in route.stops))

    def fails(self, reference: str) -> bool:
        return self.day == 0 and BY_REFERENCE[reference].fails_first_attempt

    def happenings(self) -> list[Happening]:
        out: list[Happening] = []
        for route in self.routes:
            for stop in route.stops:
                if stop.reference is None:
                    continue
                ref = stop.reference
                out += [
                    Happening(0.0, 0, "upserted", ref),
                    Happening(0.0, 1, "status", ref, status="scheduled"),
                    Happening(0.0, 2, "eta", ref),
                    Happening(
                        route.leave_depot, 0, "status", ref, status="out_for_delivery", driver=route.driver
                    ),
                    Happening(route.leave_depot, 1, "eta", ref),
                ]
                # A fresh ETA whenever a stop before this one is done, and every so often.
                out += [Happening(s.depart, 2, "eta", ref) for s in route.stops if s.arrive < stop.arrive]
                t = route.leave_depot + ETA_EVERY_SECONDS
                while t < stop.arrive:
                    out.append(Happening(t, 3, "eta", ref))
                    t += ETA_EVERY_SECONDS
                arriving = max(stop.leave_previous, stop.arrive - ARRIVING_SECONDS)
                out.append(Happening(arriving, 4, "status", ref, status="arriving", driver=route.driver))
                if self.fails(ref):
                    out.append(
                        Happening(
                            stop.depart, 5, "status", ref, status="attempt_failed", reason=FAILED_REASON
                        )
                    )
                else:
                    out.append(Happening(stop.depart, 5, "status", ref, status="delivered"))
                    out.append(Happening(stop.depart, 6, "proof", ref))
        return sorted(out, key=lambda h: (h.at, h.order, h.reference))


def day_plan(day: int, *, seed: int) -> DayPlan:
    rng = random.Random(f"{seed}:{day}")
    return DayPlan(day=day, routes=[route_plan(driver, rng=rng) for driver in DRIVERS])


# --- contract-shaped events (routing-events.md, section 1) ------------------------------


def seed_event_id(reference: str, what: str) -> str:
    """The stable ids of demo_data's events, which make running it again change nothing."""
    return f"demo-{reference}-{what}"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(ZoneInfo(TIMEZONE)).isoformat(timespec="microseconds")


def window_json(start: datetime, end: datetime) -> dict[str, str]:
    return {"start": rfc3339(start), "end": rfc3339(end)}


def upserted_event(
    delivery: DemoDelivery, *, event_id: str, occurred_at: datetime, window: tuple[datetime, datetime] | None
) -> dict[str, Any]:
    customer: dict[str, str] = {"name": delivery.name, "locale": delivery.locale}
    if delivery.phone:
        customer["phone"] = delivery.phone
    if delivery.email:
        customer["email"] = delivery.email
    address: dict[str, Any] = {
        "line1": delivery.line1, "city": CITY, "postcode": delivery.postcode, "country": COUNTRY,
        "lat": delivery.point.lat, "lon": delivery.point.lon,
    }  # fmt: skip
    if delivery.line2:
        address["line2"] = delivery.line2
    data: dict[str, Any] = {
        "reference": delivery.reference, "customer": customer, "address": address,
        "timezone": TIMEZONE, "zone": delivery.zone, "items": delivery.items,
    }  # fmt: skip
    if window is not None:
        data["window"] = window_json(*window)
    return _event(event_id, "delivery.upserted", occurred_at, data)


def status_event(
    reference: str, status: str, *, event_id: str, occurred_at: datetime,
    driver: DemoDriver | None = None, reason: str = "",
) -> dict[str, Any]:  # fmt: skip
    data: dict[str, Any] = {"reference": reference, "status": status}
    if driver is not None:
        data["driver"] = driver.as_contract()
    if reason:
        data["reason"] = reason
    return _event(event_id, "delivery.status", occurred_at, data)


def eta_event(
    reference: str, *, event_id: str, occurred_at: datetime, eta: datetime,
    window: tuple[datetime, datetime], stops_before: int,
) -> dict[str, Any]:  # fmt: skip
    data = {
        "reference": reference,
        "eta": rfc3339(eta),
        "window": window_json(*window),
        "stops_before": stops_before,
    }
    return _event(event_id, "delivery.eta", occurred_at, data)


def location_event(
    driver_id: str, *, event_id: str, point: Point, heading: float, speed_mps: float,
    accuracy_m: float, recorded_at: datetime,
) -> dict[str, Any]:  # fmt: skip
    data = {
        "driver_id": driver_id, "lat": point.lat, "lon": point.lon, "heading": round(heading, 1),
        "speed_mps": round(speed_mps, 2), "accuracy_m": round(accuracy_m, 1),
        "recorded_at": rfc3339(recorded_at),
    }  # fmt: skip
    return _event(event_id, "driver.location", recorded_at, data)


def proof_event(delivery: DemoDelivery, *, event_id: str, occurred_at: datetime) -> dict[str, Any]:
    data = {
        "reference": delivery.reference,
        "recipient_name": delivery.name.split()[0],
        "note": "Handed to customer",
        "photo": proof_photo(delivery.reference),
    }
    return _event(event_id, "delivery.proof", occurred_at, data)


def _event(event_id: str, kind: str, occurred_at: datetime, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": event_id, "type": kind, "occurred_at": rfc3339(occurred_at), "data": data}


def proof_photo(reference: str) -> str:
    """A small real PNG (a parcel by a door) as a data: URL, tinted per delivery."""
    from PIL import Image, ImageDraw

    hue = zlib.crc32(reference.encode()) % 120
    image = Image.new("RGB", (96, 72), (200 - hue // 2, 220, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 54, 95, 71), fill=(150, 150, 150))  # porch
    draw.rectangle((52, 10, 80, 54), fill=(110 + hue, 60, 40), outline=(60, 30, 20))  # door
    draw.ellipse((74, 32, 77, 35), fill=(230, 200, 80))  # handle
    draw.rectangle((18, 36, 44, 58), fill=(196, 154, 96), outline=(120, 90, 50))  # parcel
    draw.line((18, 46, 44, 46), fill=(230, 220, 190), width=2)  # tape
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def promised_window(delivery: DemoDelivery, *, now: datetime) -> tuple[datetime, datetime] | None:
    """demo_data's window: the delivery's two local hours today, or tomorrow once they are past."""
    if delivery.window_hour is None:
        return None
    zone = ZoneInfo(TIMEZONE)
    local = now.astimezone(zone)
    start = datetime.combine(local.date(), time(delivery.window_hour), tzinfo=zone)
    if start + timedelta(hours=2) <= local:
        start = datetime.combine(local.date() + timedelta(days=1), time(delivery.window_hour), tzinfo=zone)
    return start, start + timedelta(hours=2)
