"""Data-subject requests: `manage.py customer_data export|erase --phone X | --email Y`.

export prints, as JSON, everything Porchlight holds about that person (deliveries with their
proof, booking, events and messages; consent; the SMS they sent us; stored provider payloads).
erase blanks it as the retention job would (tracking/privacy.py), whatever its age, and keeps an
opt-out so that a new order to that number or address is still not messaged.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tracking.privacy import SubjectError, customer_data_erase, customer_data_export, subject_for


class Command(BaseCommand):
    help = "Export or erase what Porchlight holds about one phone number or email address."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["export", "erase"])
        parser.add_argument("--phone", default="", help="in international form, e.g. +19565550123")
        parser.add_argument("--email", default="")
        parser.add_argument(
            "--yes", "--noinput", dest="yes", action="store_true", help="erase without asking"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            subject = subject_for(phone=options["phone"], email=options["email"])
        except SubjectError as error:
            raise CommandError(str(error)) from error
        if options["action"] == "export":
            self.stdout.write(json.dumps(customer_data_export(subject=subject), indent=2, ensure_ascii=False))
            return
        found = subject.deliveries().count()
        if not options["yes"]:
            answer = input(f"Erase the personal data of {found} deliveries and their messages? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                raise CommandError("nothing erased")
        report = customer_data_erase(subject=subject)
        self.stdout.write(
            f"erased: {report.deliveries} deliveries, {report.notifications} other messages, "
            f"{report.inbound_messages} SMS received; consent removed: {report.consent_removed}; "
            f"opt-outs kept: {report.opt_outs_kept}"
        )
