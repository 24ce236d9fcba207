from __future__ import annotations

import pytest
from django.db import OperationalError

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_touching_the_database(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ok_when_every_dependency_answers(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["database"] is True


def test_readyz_is_503_with_retry_after_when_redis_is_unreachable(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"] is False
    assert response["Retry-After"] == "5"


def test_the_intake_answers_503_not_500_when_the_database_is_down(
    post_events, monkeypatch, contract_examples
):
    def unreachable(**kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr("tracking.services.events_ingest", unreachable)
    response = post_events(contract_examples["inbound"][0])
    assert response.status_code == 503
    assert response["Retry-After"] == "10"
    assert response.json()["error"] == "service_unavailable"
