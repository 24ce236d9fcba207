"""Notifications with the real pieces: Redis as the broker, a Celery worker subprocess on the
test database, the file-based SMS and email backends, and (for the storm) daphne."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
import redis
from django.conf import settings
from django.utils import timezone

from notifications.models import Notification
from notifications.tasks import notifications_sweep
from tests.notifications.conftest import status, upsert
from tests.services import celery_worker, daphne, wait_for
from tracking import signing

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def worker_env(tmp_path) -> dict[str, str]:
    return {
        "SMS_BACKEND": "notifications.backends.filebased.SMSBackend",
        "SMS_FILE_PATH": str(tmp_path / "sms"),
        "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "EMAIL_FILE_PATH": str(tmp_path / "mail"),
        "NOTIFY_QUIET_HOURS": "",
    }


def sms_files(tmp_path) -> list[str]:
    folder = tmp_path / "sms"
    return sorted(p.read_text(encoding="utf-8") for p in folder.glob("*.txt")) if folder.exists() else []


def all_sent() -> bool:
    return Notification.objects.exists() and not Notification.objects.exclude(status="sent").exists()


def test_status_changes_reach_the_customer_through_a_real_worker(post_events, tmp_path):
    now = timezone.now()
    with celery_worker(**worker_env(tmp_path)):
        assert post_events(upsert("INT-1", at=now, email="ana@example.com")).status_code == 200
        wait_for(
            lambda: len(sms_files(tmp_path)) == 1 and all_sent(), timeout=20, what="the order-received text"
        )
        assert (
            post_events(status("INT-1", "out_for_delivery", at=now + timedelta(seconds=1))).status_code == 200
        )
        wait_for(
            lambda: len(sms_files(tmp_path)) == 2 and all_sent(), timeout=20, what="the out-for-delivery text"
        )
    files = sms_files(tmp_path)
    assert all(text.startswith("To: +19565550123\n") for text in files)
    assert sum("out for delivery" in text for text in files) == 1
    assert set(Notification.objects.values_list("attempts", flat=True)) == {1}


def test_a_duplicate_storm_through_the_intake_sends_one_message(tmp_path):
    now = timezone.now()
    secret = settings.PORCHLIGHT_ROUTING_SECRETS[0]
    storm = json.dumps(
        status("STORM-1", "out_for_delivery", at=now + timedelta(seconds=1), event_id="storm-evt-1")
    ).encode()
    with (
        celery_worker(**worker_env(tmp_path)),
        daphne(NOTIFY_QUIET_HOURS="") as base,
        httpx.Client(base_url=base, timeout=30) as http,
    ):

        def post(body: bytes) -> int:
            headers = {
                "Content-Type": "application/json",
                signing.HEADER: signing.sign(secret=secret, body=body),
            }
            return http.post("/api/v1/events", content=body, headers=headers).status_code

        assert post(json.dumps(upsert("STORM-1", at=now)).encode()) == 200
        wait_for(
            lambda: len(sms_files(tmp_path)) == 1 and all_sent(), timeout=20, what="the order-received text"
        )
        with ThreadPoolExecutor(max_workers=20) as pool:
            codes = list(pool.map(post, [storm] * 300))
        assert codes == [200] * 300
        wait_for(
            lambda: len(sms_files(tmp_path)) >= 2 and all_sent(), timeout=30, what="the texts of the storm"
        )
        # The storm published no other task: once the queue is drained, nothing more can come.
        broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        wait_for(lambda: broker.llen("celery") == 0, timeout=10, what="an empty queue")
    assert list(Notification.objects.order_by("pk").values_list("kind", flat=True)) == [
        "received",
        "out_for_delivery",
    ]
    assert len(sms_files(tmp_path)) == 2  # exactly one provider call per message


def test_a_task_lost_by_the_broker_is_sent_by_the_sweeper(post_events, tmp_path):
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    response = post_events(upsert("LOST-1", at=timezone.now()))  # no worker yet: the task waits in Redis
    assert response.status_code == 200
    assert broker.llen("celery") >= 1
    broker.delete("celery")  # as when Redis restarts without persistence
    with celery_worker(**worker_env(tmp_path)):
        assert Notification.objects.get().status == "queued"
        notifications_sweep.delay()  # what beat publishes every NOTIFY_SWEEP_INTERVAL
        wait_for(lambda: len(sms_files(tmp_path)) == 1 and all_sent(), timeout=20, what="the sweeper's send")
    assert Notification.objects.get().attempts == 1
