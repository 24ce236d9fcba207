"""Demo zones, weekly templates and slots for `manage.py demo_data` (idempotent)."""

from __future__ import annotations

from datetime import time

from scheduling.models import SlotTemplate, Zone
from scheduling.services import slots_generate

DEMO_ZONES = {"laredo-central": "Laredo Central", "laredo-north": "Laredo North"}
# Monday to Saturday; the small late slot shows "few left" on the demo page.
DEMO_WINDOWS = [
    (time(8), time(10), 6),
    (time(10), time(12), 6),
    (time(12), time(14), 4),
    (time(14), time(16), 6),
    (time(16), time(18), 1),
]


def seed_demo_schedule() -> None:
    zones = []
    for code, name in DEMO_ZONES.items():
        zone, _ = Zone.objects.update_or_create(
            code=code, defaults={"name": name, "timezone": "America/Chicago"}
        )
        zones.append(zone)
        for weekday in range(6):
            for start, end, capacity in DEMO_WINDOWS:
                SlotTemplate.objects.get_or_create(
                    zone=zone, weekday=weekday, start_time=start, end_time=end,
                    defaults={"capacity": capacity},
                )  # fmt: skip
    slots_generate(zones=zones)
