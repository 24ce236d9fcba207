from __future__ import annotations

import pytest

from scheduling.models import Booking, BookingChange, Slot
from scheduling.services import booking_book
from tests.scheduling.factories import make_delivery, make_slot, make_zone
from tracking.models import OutboundEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_user(django_user_model):
    # No password: pytest-django's own fixture spends a PBKDF2 hash per test.
    return django_user_model.objects.create(username="staff", is_staff=True, is_superuser=True)


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def test_the_slot_list_shows_booked_against_capacity(admin_client):
    slot = make_slot(capacity=4)
    booking_book(delivery=make_delivery(zone=slot.zone), slot_id=slot.pk)
    html = admin_client.get("/admin/scheduling/slot/").content.decode()
    assert '<meter min="0" max="4" value="1"></meter> 25%' in html


def test_staff_book_inside_the_cutoff_on_the_customers_behalf(admin_client, admin_user):
    slot = make_slot(hours_ahead=2)  # past the customers' 12 h cutoff
    delivery = make_delivery(zone=slot.zone)
    response = admin_client.post(
        "/admin/scheduling/booking/book/", {"reference": delivery.reference, "slot": slot.pk}
    )
    assert response.status_code == 302
    assert Booking.objects.get(delivery=delivery).slot == slot
    change = BookingChange.objects.get(booking__delivery=delivery)
    assert (change.by, change.staff_user) == ("staff", admin_user.username)
    assert OutboundEvent.objects.get(delivery=delivery).data["by"] == "staff"


def test_staff_booking_still_follows_the_other_rules(admin_client):
    slot = make_slot(capacity=0)
    delivery = make_delivery(zone=slot.zone)
    response = admin_client.post(
        "/admin/scheduling/booking/book/", {"reference": delivery.reference, "slot": slot.pk}
    )
    assert response.status_code == 200
    assert "just filled up" in response.content.decode()
    other = make_slot(zone=make_zone())
    response = admin_client.post(
        "/admin/scheduling/booking/book/", {"reference": delivery.reference, "slot": other.pk}
    )
    assert "choose one of the delivery times" in response.content.decode()
    assert (
        admin_client.post(
            "/admin/scheduling/booking/book/", {"reference": "NOPE", "slot": slot.pk}
        ).status_code
        == 200
    )
    assert not Booking.objects.exists()


def test_lowering_capacity_below_the_booked_places_is_refused_and_booked_is_never_overwritten(admin_client):
    slot = make_slot(capacity=3)
    for _ in range(2):
        booking_book(delivery=make_delivery(zone=slot.zone), slot_id=slot.pk)
    response = admin_client.post(f"/admin/scheduling/slot/{slot.pk}/change/", {"capacity": "1"}, follow=True)
    assert "Capacity not changed: 2 place(s) are booked" in response.content.decode()
    admin_client.post(f"/admin/scheduling/slot/{slot.pk}/change/", {"capacity": "5"})
    slot.refresh_from_db()
    assert (slot.capacity, slot.booked) == (5, 2)


def test_the_cancel_action_gives_places_back(admin_client):
    slot = make_slot(capacity=2)
    delivery = make_delivery(zone=slot.zone)
    booking_book(delivery=delivery, slot_id=slot.pk)
    booking = Booking.objects.get(delivery=delivery)
    admin_client.post(
        "/admin/scheduling/booking/", {"action": "cancel_bookings", "_selected_action": [booking.pk]}
    )
    assert Slot.objects.get(pk=slot.pk).booked == 0


@pytest.mark.parametrize(
    "path", ["zone/", "zone/add/", "slottemplate/", "blackoutdate/", "slot/add/", "booking/", "booking/book/"]
)
def test_admin_pages_load(admin_client, path):
    assert admin_client.get(f"/admin/scheduling/{path}").status_code == 200


def test_the_booking_list_links_to_booking_on_a_customers_behalf(admin_client):
    html = admin_client.get("/admin/scheduling/booking/").content.decode()
    assert 'href="/admin/scheduling/booking/book/"' in html
