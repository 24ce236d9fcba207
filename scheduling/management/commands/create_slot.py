"""`manage.py create_slot --zone CODE --start ISO --end ISO --capacity N` (contract section 3).

Creates the zone if needed and prints the slot's id alone on the last line, so scripts can
read it with `tail -n 1`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.management.base import BaseCommand, CommandError, CommandParser

from scheduling.models import Zone
from scheduling.services import slot_create


class Command(BaseCommand):
    help = "Create one delivery slot (and its zone if needed); prints the slot id on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--zone", required=True, help="zone code")
        parser.add_argument(
            "--start", required=True, help="ISO 8601; without an offset, the zone's local time"
        )
        parser.add_argument("--end", required=True, help="ISO 8601; without an offset, the zone's local time")
        parser.add_argument("--capacity", required=True, type=int)
        parser.add_argument("--timezone", default="UTC", help="IANA time zone of a new zone (default UTC)")

    def handle(self, *args: Any, **options: Any) -> None:
        code = options["zone"].strip()
        if not code or len(code) > 64:
            raise CommandError("--zone must be 1 to 64 characters")
        existing = Zone.objects.filter(code=code).first()
        tz_name = existing.timezone if existing else options["timezone"]
        try:
            tz = ZoneInfo(tz_name)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise CommandError(f"unknown time zone {tz_name!r}") from error
        start = self._parse(options["start"], "--start", tz)
        end = self._parse(options["end"], "--end", tz)
        try:
            slot, created = slot_create(
                zone_code=code, start=start, end=end, capacity=options["capacity"], timezone_name=tz_name
            )
        except ValueError as error:
            raise CommandError(str(error)) from error
        if not created:
            self.stdout.write(f"slot already existed (capacity {slot.capacity}, {slot.booked} booked)")
        self.stdout.write(str(slot.pk))

    @staticmethod
    def _parse(value: str, name: str, tz: ZoneInfo) -> datetime:
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as error:
            raise CommandError(f"{name} is not an ISO 8601 date-time: {value!r}") from error
        return parsed.replace(tzinfo=tz) if parsed.tzinfo is None else parsed
