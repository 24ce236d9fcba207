"""On PostgreSQL every kind of search reads an index (trigrams for names and references,
expressions for any-case references and e-mails), so it stays fast at 100,000 deliveries
(bench/bench_support.py measures it)."""

from __future__ import annotations

import pytest
from django.db import connection

from tests.tracking.support_factories import make_delivery
from tracking.models import Delivery
from tracking.support import Fold, search_plan

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


@pytest.fixture(autouse=True)
def _postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: its indexes are what is tested")


def plan_of(text: str, *, partial: bool) -> str:
    plan = search_plan(text=text)
    condition = plan.partial if partial else plan.exact
    assert condition is not None, text
    queryset = Delivery.objects.alias(name_folded=Fold("customer_name")).filter(condition)
    with connection.cursor() as cursor:
        # Only within this test's transaction: with sequential scans priced out, a plan that
        # still scans the table means no index matches the query's expression.
        cursor.execute("SET LOCAL enable_seqscan = off")
    return queryset.explain()


@pytest.mark.parametrize(
    ("text", "partial", "index"),
    [
        ("ord-10045", False, "delivery_reference_upper"),
        ("Maria.Pena@Example.com", False, "delivery_email_upper"),
        ("(956) 555-0123", False, "tracking_delivery_phone"),
        ("maria jose pena", True, "delivery_search_name"),
        ("10045", True, "delivery_search_reference"),
    ],
)
def test_each_kind_of_search_reads_its_index(text: str, partial: bool, index: str) -> None:
    make_delivery(reference="ORD-10045", customer_name="María José Peña", email="maria.pena@example.com")
    plan = plan_of(text, partial=partial)
    assert "Seq Scan" not in plan, plan
    assert index in plan, plan


def test_the_token_is_an_exact_unique_lookup() -> None:
    delivery = make_delivery()
    plan = plan_of(f"https://porch.example/t/{delivery.tracking_token}/", partial=False)
    assert "Seq Scan" not in plan and "tracking_token" in plan, plan


def test_porchlight_fold_matches_the_python_fold_for_names_seen_in_the_field() -> None:
    from tracking.support import fold_text

    names = ["María José Peña", "ZOË ÅNGSTRÖM", "Łukasz Żółć", "Straße", "Søren Kierkegaard", "Çağlar Öztürk"]
    with connection.cursor() as cursor:
        for name in names:
            cursor.execute("SELECT porchlight_fold(%s)", [name])
            assert cursor.fetchone()[0] == fold_text(name), name
