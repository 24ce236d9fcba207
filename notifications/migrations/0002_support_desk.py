# Placeholder kept in the migration graph so that work in parallel does not fork it;
# #6 (support desk).
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0001_initial"),
    ]

    operations: list[migrations.operations.base.Operation] = []
