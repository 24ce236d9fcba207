from __future__ import annotations

import pytest

from tracking.models import Delivery, Driver, InboundEvent

pytestmark = pytest.mark.django_db


def test_the_contract_examples_are_all_applied(post_events, contract_examples):
    response = post_events({"events": contract_examples["inbound"]})
    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert [r["result"] for r in results] == ["accepted"] * 7 + ["pending"]
    assert results[0]["tracking_url"].startswith("http://testserver/t/")
    delivery = Delivery.objects.get(reference="ORD-10023")
    assert delivery.status == "delivered"
    assert delivery.proof.photo_content_type == "image/png"
    assert Driver.objects.get(external_id="drv_7").lat == 27.5301
    assert InboundEvent.objects.count() == 8
    again = post_events({"events": contract_examples["inbound"]}).json()["results"]
    assert {r["result"] for r in again} == {"duplicate"}
