# #8 (Onfleet/Spoke adapters): the stored provider payloads, replayable from the admin.
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tracking", "0002_customer_feedback_and_token_revocation"),
    ]

    operations = [
        migrations.CreateModel(
            name="ProviderPayload",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("provider", models.CharField(choices=[("onfleet", "Onfleet"), ("spoke", "Spoke Dispatch")], max_length=16)),
                ("key", models.CharField(max_length=300)),
                ("kind", models.CharField(blank=True, help_text="trigger name or event type", max_length=64)),
                ("reference", models.CharField(blank=True, help_text="the delivery's reference", max_length=200)),
                ("body", models.TextField(help_text="the raw body, as received")),
                (
                    "outcome",
                    models.CharField(
                        choices=[
                            ("applied", "applied"),
                            ("rejected", "rejected (some events)"),
                            ("ignored", "ignored"),
                            ("failed", "failed (mapping error)"),
                        ],
                        max_length=16,
                    ),
                ),
                ("results", models.JSONField(blank=True, default=list, help_text="the intake's result per native event")),
                ("error", models.TextField(blank=True)),
                ("received_at", models.DateTimeField()),
                ("times_received", models.PositiveIntegerField(default=1)),
                ("replayed_at", models.DateTimeField(blank=True, null=True)),
                ("replays", models.PositiveIntegerField(default=0)),
            ],
            options={
                "indexes": [
                    models.Index(fields=["-received_at"], name="provider_payload_received"),
                    models.Index(fields=["reference"], name="provider_payload_reference"),
                ],
                "constraints": [models.UniqueConstraint(fields=("provider", "key"), name="provider_payload_key")],
            },
        ),
    ]
