# Placeholder kept in the migration graph so that work in parallel does not fork it;
# #4/#7 (chaos and reliability work).
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0003_privacy"),
    ]

    operations: list[migrations.operations.base.Operation] = []
