"""`python manage.py demo_data`: the demo city's deliveries, through the intake, idempotently.

Every event has a stable id, so a second run is all `duplicate`: nothing changes and the
same links are printed. Deliveries that already moved on (the simulator drives them) keep
their state.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from scheduling.demo import seed_demo_schedule
from tracking import demo
from tracking.models import Delivery
from tracking.services import driver_update, events_ingest, tracking_url

DEMO_SOURCE = "demo"


def demo_events(*, now: datetime) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for delivery in demo.DELIVERIES:
        window = demo.promised_window(delivery, now=now)
        events.append(
            demo.upserted_event(
                delivery,
                event_id=demo.seed_event_id(delivery.reference, "upserted"),
                occurred_at=now,
                window=window,
            )
        )
        if window is not None:
            # Planned onto a route; the others wait for their customer to pick a slot.
            events.append(
                demo.status_event(
                    delivery.reference,
                    "scheduled",
                    event_id=demo.seed_event_id(delivery.reference, "scheduled"),
                    occurred_at=now,
                )
            )
    return events


class Command(BaseCommand):
    help = "Create the demo deliveries (idempotent) through the intake and print their tracking links."

    def handle(self, *args: Any, **options: Any) -> None:
        results = events_ingest(raw_events=demo_events(now=timezone.now()), source=DEMO_SOURCE)
        rejected = [result for result in results if result["result"] == "rejected"]
        if rejected:
            raise CommandError(f"The intake rejected demo events: {rejected}")
        # Drivers are known from the routing backend's events; these are the ones the simulator
        # sends, with their names, so that the admin lists them before the first van leaves.
        with transaction.atomic():
            for driver in demo.DRIVERS:
                driver_update(external_id=driver.id, name=driver.name, vehicle=driver.vehicle)

        # Demo zones, weekly slot templates and the coming days' slots (idempotent).
        seed_demo_schedule()

        self._print_deliveries()
        drivers = ", ".join(f"{d.name} ({d.vehicle})" for d in demo.DRIVERS)
        self.stdout.write(f"Drivers: {drivers}")
        self._print_admin()

    def _print_deliveries(self) -> None:
        deliveries = {d.reference: d for d in Delivery.objects.filter(reference__in=demo.BY_REFERENCE)}
        self.stdout.write(self.style.MIGRATE_HEADING(f"Demo deliveries ({demo.CITY}, {demo.TIMEZONE}):"))
        for item in demo.DELIVERIES:
            delivery = deliveries[item.reference]
            self.stdout.write(
                f"  {delivery.reference:<10} {delivery.customer_name:<16} {delivery.locale:<5} "
                f"{delivery.get_status_display():<17} {tracking_url(delivery)}"
            )
        unscheduled = [d.reference for d in demo.DELIVERIES if d.window_hour is None]
        self.stdout.write(f"  ({', '.join(unscheduled)} have no window yet: their customers pick a slot.)")

    def _print_admin(self) -> None:
        admin_url = f"{settings.PORCHLIGHT_PUBLIC_URL}/admin/"
        if not settings.DEBUG:
            # Never a known password on a real deployment.
            self.stdout.write(f"Admin: {admin_url} (create an account with `manage.py createsuperuser`)")
            return
        users = get_user_model()
        if not users.objects.filter(is_superuser=True).exists():
            users.objects.create_superuser("admin", "admin@localhost", "admin")
        user = users.objects.filter(username="admin", is_superuser=True).first()
        if user is not None and user.check_password("admin"):
            self.stdout.write(f"Admin: {admin_url} (user admin, password admin: DEBUG only)")
        else:
            self.stdout.write(f"Admin: {admin_url} (log in with your superuser)")
