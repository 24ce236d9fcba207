# #6 (support desk): the tracking link sent again by support is a message kind of its own.
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0001_initial"),
    ]

    operations = [
        migrations.AlterField(
            model_name="notification",
            name="kind",
            field=models.CharField(choices=[("received", "order received"), ("out_for_delivery", "out for delivery"), ("approaching", "approaching"), ("delayed", "delayed"), ("delivered", "delivered"), ("attempt_failed", "attempt failed"), ("booked", "slot booked"), ("moved", "slot moved"), ("reminder", "day-before reminder"), ("tracking_link", "tracking link (sent by support)")], max_length=24),
        ),
    ]
