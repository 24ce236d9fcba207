"""Onfleet's webhooks as native events (docs/integrations.md has the mapping as a table).

Onfleet sends one trigger per request: `time` (ms), `triggerId`, `triggerName`, `taskId`,
`workerId`, `actionContext` and `data` with `data.task` (and sometimes `data.worker`). The
delivery's reference is the task `id`.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings

from tracking.integrations import mapping
from tracking.integrations.mapping import Malformed, Mapped, obj, text

PROVIDER = "onfleet"
SIGNATURE_HEADER = "X-Onfleet-Signature"

TRIGGERS = {
    0: "taskStarted",
    1: "taskEta",
    2: "taskArrival",
    3: "taskCompleted",
    4: "taskFailed",
    5: "workerDuty",
    6: "taskCreated",
    7: "taskUpdated",
    8: "taskDeleted",
    9: "taskAssigned",
    10: "taskUnassigned",
    12: "taskDelayed",
    13: "taskCloned",
}
# The triggers whose task is the delivery's details as of `time`.
UPSERT_TRIGGERS = frozenset({"taskCreated", "taskUpdated", "taskCloned"})


def signature_matches(*, header: str, body: bytes, secrets: Iterable[str]) -> bool:
    """`X-Onfleet-Signature`: hex HMAC-SHA512 of the raw body, keyed with the hex-decoded secret."""
    try:
        candidate = bytes.fromhex(header.strip())
    except ValueError:
        return False
    matched = False
    for secret in secrets:
        try:
            key = binascii.a2b_hex(secret.strip())
        except (binascii.Error, ValueError):
            continue  # a secret that is not hex cannot be Onfleet's; never key with its text
        if not key:
            continue
        expected = hmac.new(key, body, hashlib.sha512).digest()
        matched |= hmac.compare_digest(expected, candidate)
    return matched


def map_payload(document: Any) -> Mapped:
    if not isinstance(document, dict):
        raise Malformed("An Onfleet webhook body is a JSON object.")
    trigger_id = document.get("triggerId")
    if isinstance(trigger_id, bool) or not isinstance(trigger_id, int):
        raise Malformed("triggerId must be a whole number.")
    occurred_at = mapping.from_epoch(document.get("time"), milliseconds=True)
    if occurred_at is None:
        raise Malformed("time must be epoch milliseconds.")
    data = obj(document.get("data"))
    task = obj(data.get("task"))
    # The task described (for taskCloned, the clone), else the one the trigger names.
    task_id = text(task.get("id"), limit=200) or text(document.get("taskId"), limit=200)
    worker_id = text(document.get("workerId"), limit=200) or text(obj(data.get("worker")).get("id"))
    name = TRIGGERS.get(trigger_id) or text(document.get("triggerName"), limit=64) or f"trigger{trigger_id}"
    key = f"{task_id or worker_id}:{trigger_id}:{document['time']}"
    mapped = Mapped(key=key, kind=name, reference=task_id)
    if trigger_id not in TRIGGERS:
        mapped.ignored = f"trigger {trigger_id} ({name}) is not one Porchlight maps"
        return mapped
    if name == "workerDuty":
        mapped.ignored = "workerDuty is about a driver's shift, not a delivery"
        return mapped
    if not task_id:
        mapped.ignored = "no task id"
        return mapped
    _Builder(mapped, document, task, occurred_at).build()
    if not mapped.events:
        mapped.ignored = mapped.ignored or f"{name} carried nothing Porchlight tracks"
    return mapped


class _Builder(mapping.Builder):
    provider = PROVIDER

    def __init__(self, mapped: Mapped, document: dict[str, Any], task: dict[str, Any], at: datetime) -> None:
        super().__init__(mapped, at)
        self.document = document
        self.data = obj(document.get("data"))
        self.task = task

    def build(self) -> None:
        name = self.mapped.kind
        # Every trigger's task is its state at `time`: a task whose details came with it creates
        # the delivery even when the taskCreated webhook was missed or never registered (tasks
        # imported on Onfleet's dashboard fire no taskCreated).
        if name in UPSERT_TRIGGERS or ("recipients" in self.task and "destination" in self.task):
            self.add("up", "delivery.upserted", self.upsert())
        if name == "taskStarted":
            self.status("out_for_delivery")
        elif name == "taskArrival":
            self.status("arriving")
        elif name == "taskAssigned":
            self.status("scheduled")
        elif name == "taskDeleted":
            self.status("cancelled")
        elif name == "taskEta":
            seconds = mapping.number(self.document.get("etaSeconds", self.data.get("etaSeconds")))
            eta = self.at + timedelta(seconds=seconds) if seconds is not None and seconds >= 0 else None
            self.eta(eta or self.task_time("estimatedArrivalTime"))
        elif name == "taskDelayed":
            self.eta(self.delayed_eta())
        elif name in ("taskCompleted", "taskFailed"):
            self.completed(success=name == "taskCompleted")
        elif name == "taskUnassigned":
            self.mapped.ignored = "taskUnassigned: the delivery keeps its status until it is assigned again"

    def task_time(self, key: str) -> datetime | None:
        return mapping.from_epoch(self.task.get(key), milliseconds=True)

    def driver(self) -> dict[str, Any] | None:
        worker = obj(self.data.get("worker"))
        worker_id = text(self.document.get("workerId"), limit=200) or text(worker.get("id"), limit=200)
        if not worker_id:
            worker_id = text(self.task.get("worker"), limit=200) or text(
                obj(self.task.get("container")).get("worker"), limit=200
            )
        if not worker_id:
            return None
        driver: dict[str, Any] = {"id": mapping.driver_id(PROVIDER, worker_id)}
        if worker_name := text(worker.get("name"), limit=200):
            driver["name"] = worker_name
        return driver

    def eta(self, eta: datetime | None) -> None:
        if eta is None:
            self.mapped.ignored = f"{self.mapped.kind} without a usable ETA"
            return
        self.add("eta", "delivery.eta", {"reference": self.mapped.reference, "eta": mapping.rfc3339(eta)})

    def delayed_eta(self) -> datetime | None:
        """taskDelayed's `delay` is seconds past completeBefore; else Onfleet's own estimate."""
        delay = mapping.number(self.document.get("delay", self.data.get("delay")))
        before = self.task_time("completeBefore")
        if delay is not None and delay >= 0 and before is not None:
            return before + timedelta(seconds=delay)
        return self.task_time("estimatedArrivalTime") or (
            self.at + timedelta(seconds=delay) if delay is not None and delay >= 0 else None
        )

    def completed(self, *, success: bool) -> None:
        details = obj(self.task.get("completionDetails"))
        done_at = mapping.from_epoch(details.get("time"), milliseconds=True) or self.at
        if success and details.get("success") is not False:
            self.status("delivered", at=done_at)
            self.proof(details, done_at)
            return
        reason = text(details.get("failureReason"), limit=200)
        notes = text(details.get("failureNotes")) or text(details.get("notes"))
        reason = "" if reason == "NONE" else reason
        self.status("attempt_failed", ": ".join(part for part in (reason, notes) if part), at=done_at)

    def proof(self, details: dict[str, Any], at: datetime) -> None:
        """Onfleet gives photo upload ids, not URLs: with ONFLEET_PHOTO_URL_TEMPLATE set, the first
        becomes the proof's photo_url (never fetched here); without it there is no native proof,
        which needs a photo, and the ids stay in the stored payload."""
        template = settings.ONFLEET_PHOTO_URL_TEMPLATE
        ids = details.get("photoUploadIds")
        ids = ids if isinstance(ids, list) else [details.get("photoUploadId")]
        photo_id = next((text(i, limit=100) for i in ids if text(i, limit=100)), "")
        if not template or not photo_id:
            return
        data: dict[str, Any] = {
            "reference": self.mapped.reference,
            "photo_url": template.replace("{id}", photo_id),
        }
        recipients = self.task.get("recipients")
        first = obj(recipients[0]) if isinstance(recipients, list) and recipients else {}
        if recipient := text(details.get("signatureText"), limit=200) or text(first.get("name"), limit=200):
            data["recipient_name"] = recipient
        if note := text(details.get("notes")):
            data["note"] = note
        self.add("pf", "delivery.proof", data, at)

    def upsert(self) -> dict[str, Any]:
        recipients = self.task.get("recipients")
        recipient = obj(recipients[0]) if isinstance(recipients, list) and recipients else {}
        destination = obj(self.task.get("destination"))
        address = obj(destination.get("address"))
        location = destination.get("location")
        lon = lat = None
        if isinstance(location, list) and len(location) == 2:  # GeoJSON order: [longitude, latitude]
            lon, lat = mapping.number(location[0]), mapping.number(location[1])
        phone = text(recipient.get("phone"), limit=40)
        line1 = " ".join(p for p in (text(address.get("number")), text(address.get("street"))) if p)
        country = mapping.country_code(text(address.get("country"), limit=100))
        after, before = self.task_time("completeAfter"), self.task_time("completeBefore")
        return mapping.upsert_data(
            reference=self.mapped.reference,
            name=text(recipient.get("name"), limit=200),
            phone=phone,
            email=text(recipient.get("email"), limit=254),
            line1=(line1 or text(address.get("unparsed"), limit=300))[:300],
            line2=text(address.get("apartment"), limit=300),
            city=text(address.get("city"), limit=200),
            postcode=text(address.get("postalCode"), limit=32),
            country=country or mapping.phone_region(phone),
            lat=lat,
            lon=lon,
            window=(after, before) if after and before else None,
        )
