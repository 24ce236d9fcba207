# Placeholder kept in the migration graph so that work in parallel does not fork it;
# #7 (privacy and retention).
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0002_support_desk"),
    ]

    operations: list[migrations.operations.base.Operation] = []
