# Placeholder kept in the migration graph so that work in parallel does not fork it;
# #6 (support desk): notes, contacts and staff actions.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("tracking", "0003_provider_payload"),
    ]

    operations: list[migrations.operations.base.Operation] = []
