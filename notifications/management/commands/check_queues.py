"""`python manage.py check_queues [--stuck-after 60]`: a liveness check of the workers.

Messages and outbound events that are due but that no worker has taken for longer than
`--stuck-after` seconds mean that nothing consumes: no worker runs, or one is connected but
stuck (after a Redis restart, celery#8030 and its kin), or beat's sweeps do not arrive. The
database is the queue of record, so the check reads it, not the broker. Exits 1 (and logs an
ERROR line) when stuck: run it from cron or as the worker's liveness probe.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from notifications.services import notification_overdue
from tracking.outbound import outbound_overdue

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Exit 1 when due messages or outbound events have waited longer than --stuck-after seconds."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--stuck-after", type=float, default=60.0, help="seconds (default 60)")

    def handle(self, *args: Any, stuck_after: float, **options: Any) -> None:
        queues = {"notifications": notification_overdue(), "outbound events": outbound_overdue()}
        report = "; ".join(
            f"{name}: {count} due, the oldest waiting {waited:.0f} s"
            for name, (count, waited) in queues.items()
        )
        stuck = [name for name, (count, waited) in queues.items() if count and waited > stuck_after]
        if stuck:
            logger.error("queues stuck (nothing consumed for %.0f s): %s", stuck_after, report)
            raise CommandError(f"stuck: {', '.join(stuck)} ({report})")
        self.stdout.write(f"ok: {report}")
