# #4/#7 (chaos and reliability work): the lease owner, so that a redelivered task whose
# process died mid-send takes its messages back at once.
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0003_privacy"),
    ]

    operations = [
        migrations.AddField(
            model_name="notification",
            name="lease_owner",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
    ]
