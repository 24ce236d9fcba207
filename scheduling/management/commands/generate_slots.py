from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from scheduling.services import slots_generate


class Command(BaseCommand):
    help = "Generate slots from the weekly templates for the coming days (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help=f"days ahead (default {settings.PORCHLIGHT_SLOT_DAYS_AHEAD})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        created = slots_generate(days_ahead=options["days"])
        self.stdout.write(f"{created} new slot(s)")
