# #6 (support desk): staff actions and notes, the search indexes, and the "Support" group.
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

# The customer's name folded for search (lower case, accents off) by one SQL function, so that
# the index and the query use the same expression. unaccent() is only STABLE (it reads its
# dictionary), hence the IMMUTABLE wrapper with the dictionary named: the usual recipe.
# pg_trgm and unaccent are trusted extensions (PostgreSQL 13+): the database owner may create them.
POSTGRES_FORWARD = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE EXTENSION IF NOT EXISTS unaccent",
    """CREATE OR REPLACE FUNCTION porchlight_fold(text) RETURNS text
       LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
       AS $$ SELECT lower(public.unaccent('public.unaccent'::regdictionary, $1)) $$""",
    # Substrings of names and references (trigrams), exact references and e-mails any case
    # (the expressions Django's icontains/iexact lookups write on PostgreSQL).
    "CREATE INDEX IF NOT EXISTS delivery_search_name ON tracking_delivery "
    "USING gin (porchlight_fold(customer_name) gin_trgm_ops)",
    "CREATE INDEX IF NOT EXISTS delivery_search_reference ON tracking_delivery "
    "USING gin (upper(reference::text) gin_trgm_ops)",
    "CREATE INDEX IF NOT EXISTS delivery_reference_upper ON tracking_delivery (upper(reference::text))",
    "CREATE INDEX IF NOT EXISTS delivery_email_upper ON tracking_delivery (upper(email::text))",
    # The list's default order and its date hierarchy's first step (min/max), without a sort
    # or a scan of the whole table.
    "CREATE INDEX IF NOT EXISTS delivery_updated_recent ON tracking_delivery (updated_at DESC)",
    "CREATE INDEX IF NOT EXISTS delivery_window_start ON tracking_delivery (window_start)",
]
POSTGRES_BACKWARD = [
    "DROP INDEX IF EXISTS delivery_window_start",
    "DROP INDEX IF EXISTS delivery_updated_recent",
    "DROP INDEX IF EXISTS delivery_email_upper",
    "DROP INDEX IF EXISTS delivery_reference_upper",
    "DROP INDEX IF EXISTS delivery_search_reference",
    "DROP INDEX IF EXISTS delivery_search_name",
    "DROP FUNCTION IF EXISTS porchlight_fold(text)",
]

# What the "Support" group may do: look at everything a call needs and use the desk's actions
# (add_supportaction), retry an outbound event that gave up; never delete, never edit routing data.
SUPPORT_PERMISSIONS = {
    "tracking": [
        "view_delivery", "view_driver", "view_inboundevent", "view_outboundevent",
        "change_outboundevent", "view_supportaction", "add_supportaction", "view_support_kpis",
    ],
    "notifications": [
        "view_notification", "view_consent", "view_preference", "view_inboundmessage", "view_providerevent",
    ],
    "scheduling": ["view_zone", "view_slot", "view_booking", "view_bookingchange", "view_slottemplate",
                   "view_blackoutdate"],
}


def search_indexes(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for statement in POSTGRES_FORWARD:
            schema_editor.execute(statement)


def drop_search_indexes(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for statement in POSTGRES_BACKWARD:
            schema_editor.execute(statement)


def support_group(apps, schema_editor):
    # Permissions are normally created after migrate (post_migrate); create them now so that a
    # fresh database gets the group complete.
    from django.contrib.auth.management import create_permissions

    for label in ["auth", *SUPPORT_PERMISSIONS]:
        config = apps.get_app_config(label)
        config.models_module = True
        create_permissions(config, apps=apps, verbosity=0)
        config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name="Support")
    for label, codenames in SUPPORT_PERMISSIONS.items():
        found = list(Permission.objects.filter(content_type__app_label=label, codename__in=codenames))
        missing = set(codenames) - {p.codename for p in found}
        if missing:
            raise RuntimeError(f"permissions not found for the Support group: {label}.{sorted(missing)}")
        group.permissions.add(*found)


def remove_support_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name="Support").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("tracking", "0003_provider_payload"),
        ("notifications", "0002_support_desk"),
        ("scheduling", "0002_booked_by_routing"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="SupportAction",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("kind", models.CharField(choices=[("note", "internal note"), ("contact", '"where is my order" contact'), ("link_sent", "tracking link sent again"), ("token_reissued", "tracking link revoked and reissued")], max_length=24)),
                ("username", models.CharField(max_length=150)),
                ("text", models.TextField(blank=True)),
                ("detail", models.JSONField(blank=True, default=dict)),
                ("nonce", models.CharField(max_length=64, unique=True)),
                ("at", models.DateTimeField()),
                ("delivery", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="support_actions", to="tracking.delivery")),
                ("user", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="support_actions", to=settings.AUTH_USER_MODEL)),
            ],
            options={
                "permissions": [("view_support_kpis", "Can view the support KPI page")],
                "indexes": [models.Index(fields=["delivery", "at"], name="support_delivery_history"), models.Index(fields=["kind", "at"], name="support_kind_at")],
            },
        ),
        migrations.RunPython(search_indexes, drop_search_indexes),
        migrations.RunPython(support_group, remove_support_group),
    ]
