# Placeholder kept in the migration graph so that work in parallel does not fork it;
# #8 (Onfleet/Spoke adapters): the stored provider payloads.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("tracking", "0002_customer_feedback_and_token_revocation"),
    ]

    operations: list[migrations.operations.base.Operation] = []
