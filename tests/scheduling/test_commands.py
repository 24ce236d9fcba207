from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from scheduling.demo import seed_demo_schedule
from scheduling.models import Slot, SlotTemplate, Zone
from scheduling.tasks import slots_generate as slots_generate_task

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_slot_creates_the_zone_and_prints_the_id_alone_on_the_last_line():
    output = run("create_slot", "--zone", "laredo-west", "--start", "2030-01-05T10:00:00-06:00",
                 "--end", "2030-01-05T12:00:00-06:00", "--capacity", "4")  # fmt: skip
    slot = Slot.objects.get(pk=int(output.strip().splitlines()[-1]))
    assert slot.zone.code == "laredo-west" and slot.capacity == 4
    assert slot.start == datetime(2030, 1, 5, 16, tzinfo=UTC)


def test_create_slot_reads_times_without_offset_in_the_zones_time_zone():
    Zone.objects.create(code="chi", name="Chicago", timezone="America/Chicago")
    output = run(
        "create_slot",
        "--zone",
        "chi",
        "--start",
        "2030-07-01T09:00",
        "--end",
        "2030-07-01T11:00",
        "--capacity",
        "1",
    )
    slot = Slot.objects.get(pk=int(output.strip().splitlines()[-1]))
    assert slot.start == datetime(2030, 7, 1, 14, tzinfo=UTC)  # CDT, UTC-5


def test_create_slot_twice_prints_the_same_id():
    args = (
        "create_slot",
        "--zone",
        "z",
        "--start",
        "2030-01-05T10:00Z",
        "--end",
        "2030-01-05T12:00Z",
        "--capacity",
        "2",
    )
    assert run(*args).strip().splitlines()[-1] == run(*args).strip().splitlines()[-1]
    assert Slot.objects.count() == 1


@pytest.mark.parametrize(
    "start,end,capacity",
    [
        ("nope", "2030-01-05T12:00Z", "2"),
        ("2030-01-05T12:00Z", "2030-01-05T10:00Z", "2"),
        ("2030-01-05T10:00Z", "2030-01-05T12:00Z", "-1"),
    ],
)
def test_create_slot_refuses_bad_input_with_a_message(start, end, capacity):
    with pytest.raises(CommandError):
        call_command(
            "create_slot",
            "--zone",
            "z",
            "--start",
            start,
            "--end",
            end,
            "--capacity",
            capacity,
            stdout=StringIO(),
        )
    assert not Slot.objects.exists()


def test_generate_slots_command_and_beat_task_are_idempotent():
    seed_demo_schedule()
    before = Slot.objects.count()
    assert "0 new slot(s)" in run("generate_slots")
    assert slots_generate_task() == 0
    assert Slot.objects.count() == before > 0


def test_the_demo_schedule_can_be_seeded_twice():
    seed_demo_schedule()
    counts = (Zone.objects.count(), SlotTemplate.objects.count(), Slot.objects.count())
    seed_demo_schedule()
    assert (Zone.objects.count(), SlotTemplate.objects.count(), Slot.objects.count()) == counts
    assert set(Zone.objects.values_list("code", "timezone")) == {
        ("laredo-central", "America/Chicago"), ("laredo-north", "America/Chicago")}  # fmt: skip
    first = Slot.objects.filter(zone__code="laredo-central").order_by("start").first()
    assert first.start > datetime.now(UTC) - timedelta(days=1)


def test_the_beat_schedule_runs_the_slot_generation_task(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["slots-generate"]
    assert entry["task"] == slots_generate_task.name == "scheduling.tasks.slots_generate"
    assert entry["schedule"] <= 24 * 3600
