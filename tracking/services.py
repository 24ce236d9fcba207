"""Applying the routing backend's events to deliveries and drivers (contract v1, section 1).

One request is one transaction: every event id is claimed with an insert-or-ignore on the
unique index (so exactly one of many concurrent copies wins), then pings are written in bulk
and delivery events are applied in `occurred_at` order under a row lock of their delivery.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from notifications.models import Preference
from notifications.services import notifications_for_changes
from scheduling.services import bookings_for_changes
from tracking import live, sql
from tracking.events import EVENT_TYPES, Event, Invalid, event_id_of, is_storable, parse_event
from tracking.group_commit import GroupCommit
from tracking.models import Delivery, DeliveryProof, Driver, EventResult, InboundEvent, LocationPing

logger = logging.getLogger(__name__)

DETAIL_FIELDS = (
    "customer_name", "phone", "email", "locale", "address_line1", "address_line2", "city",
    "postcode", "country", "lat", "lon", "timezone", "window_start", "window_end", "zone_code", "items",
)  # fmt: skip
PING_COLUMNS = ("driver", "lat", "lon", "heading", "speed_mps", "accuracy_m", "recorded_at", "received_at")
POSITION_FIELDS = ("lat", "lon", "heading", "speed_mps", "accuracy_m", "position_recorded_at")
EVENT_COLUMNS = ("event_id", "type", "occurred_at", "reference", "payload", "result", "received_at", "source")
# What the intake's events change on a delivery: written once per delivery at the end of a batch.
INTAKE_FIELDS = (
    *DETAIL_FIELDS, "details_at", "status", "status_reason", "status_at", "driver", "eta",
    "eta_window_start", "eta_window_end", "stops_before", "eta_at", "updated_at",
)  # fmt: skip


@dataclass
class Change:
    """One forward change of a delivery, for the features that react to it."""

    delivery: Delivery
    kind: str  # "created", "details", "status", "eta", "proof"
    event: Event
    previous: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Batch:
    received_at: datetime
    source: str
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    moved_drivers: dict[int, Driver] = field(default_factory=dict)
    # event_id -> (result, delivery id), written back to the claimed rows at the end
    outcomes: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    claimed: set[str] = field(default_factory=set)
    # Deliveries the batch changed, written together by _write_deliveries.
    changed: dict[int, Delivery] = field(default_factory=dict)


def tracking_url(delivery: Delivery) -> str:
    return f"{settings.PORCHLIGHT_PUBLIC_URL}/t/{delivery.tracking_token}/"


def events_ingest(*, raw_events: list[Any], source: str = "routing") -> list[dict[str, Any]]:
    """Apply a request's events; return one result per event, in request order."""
    received_at = timezone.now()
    batch_results: dict[int, dict[str, Any]] = {}
    parsed: list[tuple[int, Event]] = []
    rejected: list[tuple[int, object, dict[str, str]]] = []
    for index, raw in enumerate(raw_events):
        try:
            parsed.append((index, parse_event(raw)))
        except Invalid as invalid:
            batch_results[index] = {"id": event_id_of(raw), "result": "rejected", "errors": invalid.errors}
            rejected.append((index, raw, invalid.errors))

    for attempt in range(4):
        batch = _Batch(received_at=received_at, source=source, results=dict(batch_results))
        try:
            with transaction.atomic():
                _apply(batch, parsed)
                _keep_rejected(batch, rejected, parsed)
                notifications_for_changes(changes=batch.changes)
                bookings_for_changes(changes=batch.changes)
                # robust: the events are committed; a failed push must not turn the answer into a 500.
                transaction.on_commit(_publisher(batch), robust=True)
            break
        except OperationalError as error:
            # Deadlock or serialization failure between concurrent batches: both are safe
            # to run again from the start, as nothing of the failed try was kept.
            if attempt == 3 or not _is_retryable(error):
                raise
            time.sleep(0.01 * 2**attempt)
    return [batch.results[index] for index in range(len(raw_events))]


def events_ingest_together(*, raw_events: list[Any]) -> list[dict[str, Any]]:
    """`events_ingest` for the intake: a small request shares its transaction with the requests
    of this process that arrive while the previous one commits (tracking/group_commit.py)."""
    return _together.submit(raw_events)


async def events_ingest_together_async(*, raw_events: list[Any]) -> list[dict[str, Any]]:
    """`events_ingest_together` for a caller on the event loop (tracking/intake_asgi.py)."""
    return await _together.submit_async(raw_events)


_together = GroupCommit(lambda events: events_ingest(raw_events=events))


def _is_retryable(error: OperationalError) -> bool:
    code = getattr(error.__cause__, "sqlstate", None)
    return code in ("40001", "40P01")


def _publisher(batch: _Batch) -> Any:
    def publish() -> None:
        live.publish_batch(changes=batch.changes, drivers=list(batch.moved_drivers.values()))

    return publish


def _keep_rejected(
    batch: _Batch, rejected: list[tuple[int, object, dict[str, str]]], parsed: list[tuple[int, Event]]
) -> None:
    if not rejected:
        return
    # "Not applied again (duplicate), whatever its body": a bad body under an id we already
    # hold (from an earlier request or earlier in this batch) is a duplicate, not a rejection.
    ids = {event_id for _, raw, _ in rejected if (event_id := event_id_of(raw)) is not None}
    held = InboundEvent.objects.filter(event_id__in=ids - batch.claimed)
    before = set(held.values_list("event_id", flat=True)) if ids else set()
    first_valid: dict[str, int] = {}
    for index, event in parsed:
        first_valid.setdefault(event.id, index)
    kept = []
    for index, raw, errors in rejected:
        event_id = event_id_of(raw)
        if event_id is not None and (event_id in before or first_valid.get(event_id, index) < index):
            batch.results[index] = {"id": event_id, "result": "duplicate"}
        else:
            kept.append((raw, errors))
    InboundEvent.objects.bulk_create(
        InboundEvent(
            event_id=None,
            type=raw["type"] if isinstance(raw, dict) and raw.get("type") in EVENT_TYPES else "",
            payload=_storable(raw),
            result=EventResult.REJECTED,
            errors=errors,
            received_at=batch.received_at,
            source=batch.source,
        )
        for raw, errors in kept
    )


def _storable(raw: object) -> object:
    """A rejected event as we can keep it: JSON that PostgreSQL accepts."""
    # None would be stored as SQL NULL, which the payload column refuses.
    if raw is not None and is_storable(raw):
        return raw
    try:
        text = repr(raw)[:2000]
    except RecursionError:
        text = "(nested too deep to show)"
    return {"unstorable": text}


def _apply(batch: _Batch, parsed: list[tuple[int, Event]]) -> None:
    first: dict[str, tuple[int, Event]] = {}
    for index, event in parsed:
        if event.id in first:
            batch.results[index] = {"id": event.id, "result": "duplicate"}
        else:
            first[event.id] = (index, event)
    batch.claimed = set(_claim(batch, [event for _, event in first.values()]))
    fresh: list[tuple[int, Event]] = []
    for event_id, (index, event) in first.items():
        if event_id in batch.claimed:
            fresh.append((index, event))
        else:
            batch.results[index] = {"id": event_id, "result": "duplicate"}

    pings = [(index, event) for index, event in fresh if event.type == "driver.location"]
    others = [(index, event) for index, event in fresh if event.type != "driver.location"]
    _apply_pings(batch, pings)
    _apply_delivery_events(batch, others)
    _add_tracking_urls(batch, parsed)
    sql.update_rows(
        InboundEvent,
        set_names=("result", "delivery"),
        key="event_id",
        rows=[
            (result, delivery_id, event_id)
            for event_id, (result, delivery_id) in sorted(batch.outcomes.items())
        ],
    )


def _claim(batch: _Batch, events: list[Event]) -> list[str]:
    # Sorted, so that two batches sharing ids take the index entries in the same order
    # and never wait for each other in a cycle.
    rows = [
        (
            event.id,
            event.type,
            event.occurred_at,
            event.reference,
            sql.JsonText(event.raw_json),
            EventResult.ACCEPTED if event.type == "driver.location" else EventResult.PENDING,
            batch.received_at,
            batch.source,
        )
        for event in sorted(events, key=lambda e: e.id)
    ]
    return sql.insert_rows(InboundEvent, EVENT_COLUMNS, rows, conflict="event_id", returning="event_id")


# --- driver pings -----------------------------------------------------------------------


def _apply_pings(batch: _Batch, pings: list[tuple[int, Event]]) -> None:
    if not pings:
        return
    drivers = drivers_get_or_create(external_ids={event.values["driver_id"] for _, event in pings})
    sql.insert_rows(
        LocationPing,
        PING_COLUMNS,
        [
            (drivers[v["driver_id"]].pk, *(v[name] for name in PING_COLUMNS[1:-1]), batch.received_at)
            for v in (event.values for _, event in pings)
        ],
    )
    newest: dict[str, Event] = {}
    for index, event in pings:
        batch.results[index] = {"id": event.id, "result": "accepted"}
        current = newest.get(event.values["driver_id"])
        if current is None or event.values["recorded_at"] >= current.values["recorded_at"]:
            newest[event.values["driver_id"]] = event
    moves = []
    for external_id, event in sorted(newest.items(), key=lambda item: drivers[item[0]].pk):
        driver = drivers[external_id]
        if driver.position_recorded_at and driver.position_recorded_at > event.values["recorded_at"]:
            continue  # a late ping: kept in the trail, never moves the marker back
        for key in POSITION_FIELDS[:-1]:
            setattr(driver, key, event.values[key])
        driver.position_recorded_at = event.values["recorded_at"]
        batch.moved_drivers[driver.pk] = driver
        moves.append(driver)
    sql.update_rows(
        Driver,
        set_names=(*POSITION_FIELDS, "updated_at"),
        key="id",
        unless_newer="position_recorded_at",
        rows=[(*(getattr(d, name) for name in POSITION_FIELDS), batch.received_at, d.pk) for d in moves],
    )


def drivers_get_or_create(*, external_ids: set[str]) -> dict[str, Driver]:
    drivers = {d.external_id: d for d in Driver.objects.filter(external_id__in=external_ids)}
    missing = external_ids - drivers.keys()
    if missing:
        Driver.objects.bulk_create([Driver(external_id=e) for e in sorted(missing)], ignore_conflicts=True)
        drivers.update({d.external_id: d for d in Driver.objects.filter(external_id__in=missing)})
    return drivers


# --- delivery events --------------------------------------------------------------------


def _apply_delivery_events(batch: _Batch, events: list[tuple[int, Event]]) -> None:
    if not events:
        return
    by_reference: dict[str, list[tuple[int, Event]]] = defaultdict(list)
    for index, event in events:
        by_reference[event.reference].append((index, event))
    deliveries = _lock_deliveries(set(by_reference))
    for reference in sorted(by_reference):
        ordered = sorted(by_reference[reference], key=lambda item: (item[1].occurred_at, item[0]))
        to_apply: list[tuple[int | None, Event]] = list(ordered)
        delivery = deliveries.get(reference)
        if delivery is None:
            creator = next((item for item in ordered if item[1].type == "delivery.upserted"), None)
            if creator is None:
                for index, event in ordered:  # kept, applied when the delivery arrives
                    batch.results[index] = {"id": event.id, "result": "pending"}
                continue
            delivery = _create_delivery(batch, creator[1])
            _record(batch, creator[0], creator[1], EventResult.ACCEPTED, delivery)
            to_apply = _merge_pending(batch, reference, [item for item in ordered if item is not creator])
        for position, event in to_apply:
            _record(batch, position, event, _apply_one(batch, delivery, event), delivery)
    _write_deliveries(batch)


def _write_deliveries(batch: _Batch) -> None:
    """One UPDATE for every delivery the batch changed, instead of one per event.

    Each was read under its row lock at the start of the transaction (_lock_deliveries) or
    created in it, so nothing else can have changed these fields meanwhile."""
    if not batch.changed:
        return
    now = timezone.now()
    attnames = [Delivery._meta.get_field(name).attname for name in INTAKE_FIELDS]  # type: ignore[union-attr]
    rows = []
    for pk in sorted(batch.changed):
        delivery = batch.changed[pk]
        delivery.updated_at = now
        rows.append((*(getattr(delivery, attname) for attname in attnames), pk))
    sql.update_rows(Delivery, set_names=INTAKE_FIELDS, key="id", rows=rows)


def _record(batch: _Batch, index: int | None, event: Event, result: str, delivery: Delivery) -> None:
    if index is not None:
        batch.results[index] = {"id": event.id, "result": result}
    batch.outcomes[event.id] = (result, delivery.pk)


def _merge_pending(
    batch: _Batch, reference: str, ordered: list[tuple[int, Event]]
) -> list[tuple[int | None, Event]]:
    """This batch's events plus those that arrived earlier for a delivery not known then,
    together in occurred_at order (earlier requests first on a tie)."""
    waiting: list[tuple[int | None, Event]] = []
    rows = (
        InboundEvent.objects.select_for_update()
        .filter(reference=reference, result=EventResult.PENDING)
        .exclude(event_id__in=batch.claimed)
        .order_by("occurred_at", "received_at", "pk")
    )
    for row in rows:
        try:
            waiting.append((None, parse_event(row.payload)))
        except Invalid:  # we parsed it once already; never let one row block the others
            logger.warning("pending event %s no longer parses", row.event_id)
    merged = [(0, -1, item) for item in waiting] + [(1, index, (index, event)) for index, event in ordered]
    merged.sort(key=lambda m: (m[2][1].occurred_at, m[0], m[1]))
    return [item for _, _, item in merged]


def _lock_deliveries(references: set[str]) -> dict[str, Delivery]:
    """Each delivery of these references, locked (in primary key order), with its driver and
    its notification preference (the post-commit push and the notification rules read them).

    The same rows and objects as
    `Delivery.objects.select_related("driver", "notification_preference")
    .select_for_update(of=("self",)).filter(reference__in=...).order_by("pk")`, in a statement
    composed once per number of references: compiling that query took a tenth of the CPU a
    single event cost the intake (`python -m bench.profile_intake single`)."""
    found = {d.reference: d for d in _locked(sorted(references))}
    missing = sorted(references - found.keys())
    if missing and connection.vendor == "postgresql":
        # An event for an unknown reference waits for a concurrent upsert of that reference
        # to commit, so that it is either applied now or seen as pending by that upsert.
        with connection.cursor() as cursor:
            for reference in missing:
                cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [reference])
        found.update({d.reference: d for d in _locked(missing)})
    return found


def _locked(references: list[str]) -> list[Delivery]:
    columns = _locked_columns()
    with connection.cursor() as cursor:
        cursor.execute(_locked_sql(len(references)), references)
        rows = cursor.fetchall()
    delivery_end, driver_end = columns.ends
    driver_pk, preference_pk = columns.pks
    deliveries = []
    for row in rows:
        values = list(row)
        for index, converters in columns.converters:
            for convert, expression in converters:
                values[index] = convert(values[index], expression, connection)
        delivery = Delivery.from_db(connection.alias, columns.attnames[0], values[:delivery_end])
        driver = None
        if values[driver_pk] is not None:
            driver = Driver.from_db(connection.alias, columns.attnames[1], values[delivery_end:driver_end])
        preference = None
        if values[preference_pk] is not None:
            preference = Preference.from_db(connection.alias, columns.attnames[2], values[driver_end:])
            Preference.delivery.field.set_cached_value(preference, delivery)  # type: ignore[attr-defined]
        Delivery.driver.field.set_cached_value(delivery, driver)  # type: ignore[attr-defined]
        Delivery.notification_preference.related.set_cached_value(delivery, preference)  # type: ignore[attr-defined]
        deliveries.append(delivery)
    return deliveries


@dataclass(frozen=True)
class _LockedColumns:
    fields: tuple[list[Any], list[Any], list[Any]]  # of the delivery, its driver, its preference
    attnames: tuple[list[str], list[str], list[str]]
    ends: tuple[int, int]  # where the delivery's and the driver's columns end in a row
    pks: tuple[int, int]  # where the driver's and the preference's keys are (NULL: it has none)
    converters: list[tuple[int, list[tuple[Any, Any]]]]  # Django's converters, by column


@functools.cache
def _locked_columns() -> _LockedColumns:
    models_ = (Delivery, Driver, Preference)
    fields = tuple(list(model._meta.concrete_fields) for model in models_)
    converters = []
    for index, field_ in enumerate(f for group in fields for f in group):
        # As SQLCompiler.get_converters: the backend's, then the field's own.
        expression = field_.get_col(field_.model._meta.db_table)
        found = [*connection.ops.get_db_converters(expression), *expression.get_db_converters(connection)]
        if found:
            converters.append((index, [(convert, expression) for convert in found]))
    return _LockedColumns(
        fields=fields,  # type: ignore[arg-type]
        attnames=tuple([f.attname for f in group] for group in fields),  # type: ignore[arg-type]
        ends=(len(fields[0]), len(fields[0]) + len(fields[1])),
        pks=(
            len(fields[0]) + fields[1].index(Driver._meta.pk),
            len(fields[0]) + len(fields[1]) + fields[2].index(Preference._meta.pk),
        ),
        converters=converters,
    )


@functools.lru_cache(maxsize=64)
def _locked_sql(count: int) -> str:
    q = connection.ops.quote_name
    columns = _locked_columns()
    delivery_fields, driver_fields, preference_fields = columns.fields
    preference_key = Preference._meta.get_field("delivery").column
    selected = [
        *(f"d.{q(f.column)}" for f in delivery_fields),
        *(f"r.{q(f.column)}" for f in driver_fields),
        *(f"p.{q(f.column)}" for f in preference_fields),
    ]
    # Only quoted identifiers are formatted in; the references are query parameters.
    sql = (
        f"SELECT {', '.join(selected)} FROM {q(Delivery._meta.db_table)} d "  # noqa: S608
        f"LEFT JOIN {q(Driver._meta.db_table)} r ON r.{q('id')} = d.{q('driver_id')} "
        f"LEFT JOIN {q(Preference._meta.db_table)} p ON p.{q(preference_key)} = d.{q('id')} "
        f"WHERE d.{q('reference')} IN ({', '.join(['%s'] * count)}) ORDER BY d.{q('id')}"
    )
    if connection.features.has_select_for_update_of:
        sql += " FOR UPDATE OF d"
    return sql


def _create_delivery(batch: _Batch, event: Event) -> Delivery:
    values = {key: event.values[key] for key in DETAIL_FIELDS}
    delivery = Delivery.objects.create(reference=event.reference, details_at=event.occurred_at, **values)
    batch.changes.append(Change(delivery=delivery, kind="created", event=event))
    return delivery


def _apply_one(batch: _Batch, delivery: Delivery, event: Event) -> str:
    apply = APPLIERS[event.type]
    return EventResult.ACCEPTED if apply(batch, delivery, event) else EventResult.STALE


def _newer(event: Event, than: datetime | None) -> bool:
    # Last writer wins; a tie goes to the later received, which is this one.
    return than is None or event.occurred_at >= than


def _apply_upserted(batch: _Batch, delivery: Delivery, event: Event) -> bool:
    if not _newer(event, delivery.details_at):
        return False
    previous = {key: getattr(delivery, key) for key in DETAIL_FIELDS}
    for key in DETAIL_FIELDS:
        setattr(delivery, key, event.values[key])
    delivery.details_at = event.occurred_at
    batch.changed[delivery.pk] = delivery
    batch.changes.append(Change(delivery=delivery, kind="details", event=event, previous=previous))
    return True


def _apply_status(batch: _Batch, delivery: Delivery, event: Event) -> bool:
    if not _newer(event, delivery.status_at):
        return False
    previous = {"status": delivery.status, "driver_id": delivery.driver_id}
    delivery.status = event.values["status"]
    delivery.status_reason = event.values["reason"]
    delivery.status_at = event.occurred_at
    driver_values = event.values["driver"]
    if driver_values and not _is_current_driver(delivery.driver, driver_values):
        delivery.driver = driver_update(**driver_values)
    batch.changed[delivery.pk] = delivery
    batch.changes.append(Change(delivery=delivery, kind="status", event=event, previous=previous))
    return True


def _is_current_driver(driver: Driver | None, values: dict[str, str]) -> bool:
    """The event names the delivery's driver as we already hold them: nothing to look up."""
    return (
        driver is not None
        and driver.external_id == values["external_id"]
        and all(not values.get(key) or getattr(driver, key) == values[key] for key in ("name", "vehicle"))
    )


def driver_update(*, external_id: str, name: str = "", vehicle: str = "") -> Driver:
    driver = drivers_get_or_create(external_ids={external_id})[external_id]
    changed = [
        key
        for key, value in (("name", name), ("vehicle", vehicle))
        if value and getattr(driver, key) != value
    ]
    for key in changed:
        setattr(driver, key, name if key == "name" else vehicle)
    if changed:
        driver.save(update_fields=[*changed, "updated_at"])
    return driver


def _apply_eta(batch: _Batch, delivery: Delivery, event: Event) -> bool:
    if not _newer(event, delivery.eta_at):
        return False
    previous = {"eta": delivery.eta, "stops_before": delivery.stops_before}
    delivery.eta = event.values["eta"]
    delivery.eta_window_start = event.values["eta_window_start"]
    delivery.eta_window_end = event.values["eta_window_end"]
    if event.values["stops_before"] is not None:
        delivery.stops_before = event.values["stops_before"]
    delivery.eta_at = event.occurred_at
    batch.changed[delivery.pk] = delivery
    batch.changes.append(Change(delivery=delivery, kind="eta", event=event, previous=previous))
    return True


def _apply_proof(batch: _Batch, delivery: Delivery, event: Event) -> bool:
    proof = DeliveryProof.objects.filter(delivery=delivery).first()
    if proof is not None and not _newer(event, proof.occurred_at):
        return False
    values = {
        key: event.values[key]
        for key in ("recipient_name", "note", "photo", "photo_content_type", "photo_url")
    }
    DeliveryProof.objects.update_or_create(
        delivery=delivery, defaults={**values, "occurred_at": event.occurred_at}
    )
    batch.changes.append(Change(delivery=delivery, kind="proof", event=event))
    return True


APPLIERS = {
    "delivery.upserted": _apply_upserted,
    "delivery.status": _apply_status,
    "delivery.eta": _apply_eta,
    "delivery.proof": _apply_proof,
}


def _add_tracking_urls(batch: _Batch, parsed: list[tuple[int, Event]]) -> None:
    upserts = {index: event for index, event in parsed if event.type == "delivery.upserted"}
    if not upserts:
        return
    # The delivery of an upsert is the one its id was first received for: a duplicate that
    # names another reference in its body still links to the original's delivery.
    references = dict(
        InboundEvent.objects.filter(event_id__in={e.id for e in upserts.values()}).values_list(
            "event_id", "reference"
        )
    )
    deliveries = Delivery.objects.filter(reference__in=set(references.values()))
    tokens = dict(deliveries.values_list("reference", "tracking_token"))
    base = settings.PORCHLIGHT_PUBLIC_URL
    for index, event in upserts.items():
        token = tokens.get(references.get(event.id, ""))
        if token and batch.results[index]["result"] != "rejected":
            batch.results[index]["tracking_url"] = f"{base}/t/{token}/"
