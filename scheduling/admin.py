"""Staff: zones, templates, blackouts, slots (capacity against booked at a glance), and booking
or moving a delivery on the customer's behalf (`by: staff`, every rule but the cutoff)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html

from scheduling.models import BlackoutDate, BookedBy, Booking, BookingChange, Slot, SlotTemplate, Zone
from scheduling.services import (
    BookingRefused,
    booking_book,
    booking_cancel,
    slot_set_capacity,
    slots_generate,
)
from tracking.models import Delivery


class SlotTemplateInline(admin.TabularInline):
    model = SlotTemplate
    extra = 0


class BlackoutInline(admin.TabularInline):
    model = BlackoutDate
    extra = 0


@admin.register(Zone)
class ZoneAdmin(admin.ModelAdmin):
    list_display = ["code", "name", "timezone"]
    search_fields = ["code", "name"]
    inlines = [SlotTemplateInline, BlackoutInline]
    actions = ["generate_slots"]

    @admin.action(description="Generate the coming days' slots from the templates")
    def generate_slots(self, request: HttpRequest, queryset: QuerySet[Zone]) -> None:
        created = slots_generate(zones=list(queryset))
        self.message_user(request, f"{created} new slot(s).")


@admin.register(SlotTemplate)
class SlotTemplateAdmin(admin.ModelAdmin):
    list_display = ["zone", "weekday", "start_time", "end_time", "capacity", "active"]
    list_filter = ["zone", "weekday", "active"]


@admin.register(BlackoutDate)
class BlackoutDateAdmin(admin.ModelAdmin):
    list_display = ["zone", "date", "reason"]
    list_filter = ["zone"]


@admin.register(Slot)
class SlotAdmin(admin.ModelAdmin):
    list_display = ["__str__", "zone", "capacity", "booked", "fill"]
    list_filter = ["zone"]
    date_hierarchy = "start"
    list_select_related = ["zone"]

    def get_readonly_fields(self, request: HttpRequest, obj: Slot | None = None) -> list[str]:
        # Once created, only the capacity changes here, and through a conditional UPDATE:
        # saving the whole row would write back the `booked` count read when the form opened.
        return ["zone", "start", "end", "booked"] if obj else ["booked"]

    @admin.display(description="booked / capacity")
    def fill(self, slot: Slot) -> str:
        percent = 100 * slot.booked // slot.capacity if slot.capacity else 100
        return format_html(
            '<meter min="0" max="{}" value="{}"></meter> {}%', slot.capacity, slot.booked, percent
        )

    def save_model(self, request: HttpRequest, obj: Slot, form: forms.ModelForm, change: bool) -> None:
        if not change:
            super().save_model(request, obj, form, change)
            return
        if not slot_set_capacity(slot_id=obj.pk, capacity=obj.capacity):
            booked = Slot.objects.filter(pk=obj.pk).values_list("booked", flat=True).first()
            messages.error(request, f"Capacity not changed: {booked} place(s) are booked in this slot.")


class BookingChangeInline(admin.TabularInline):
    model = BookingChange
    extra = 0
    can_delete = False
    readonly_fields = ["action", "from_slot", "to_slot", "by", "staff_user", "at"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class StaffBookingForm(forms.Form):
    reference = forms.CharField(max_length=200, help_text="the delivery's reference")
    slot = forms.ModelChoiceField(queryset=Slot.objects.none())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["slot"].queryset = Slot.objects.filter(start__gt=timezone.now()).select_related("zone")  # type: ignore[attr-defined]

    def clean_reference(self) -> Delivery:
        delivery = Delivery.objects.filter(reference=self.cleaned_data["reference"]).first()
        if delivery is None:
            raise forms.ValidationError("No delivery has this reference.")
        return delivery


@admin.register(Booking)
class BookingAdmin(admin.ModelAdmin):
    list_display = ["delivery", "slot", "changes", "updated_at"]
    list_select_related = ["delivery", "slot__zone"]
    search_fields = ["delivery__reference"]
    readonly_fields = ["delivery", "slot", "changes", "created_at", "updated_at"]
    inlines = [BookingChangeInline]
    actions = ["cancel_bookings"]
    change_list_template = "scheduling/admin_booking_changelist.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # through "Book for a customer", which applies the rules

    def get_urls(self) -> list[Any]:
        return [
            path("book/", self.admin_site.admin_view(self.book_view), name="scheduling_booking_book"),
            *super().get_urls(),
        ]

    def book_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_change_permission(request):
            return HttpResponse(status=403)
        form = StaffBookingForm(request.POST or None, initial={"reference": request.GET.get("reference", "")})
        if request.method == "POST" and form.is_valid():
            delivery = form.cleaned_data["reference"]
            try:
                result = booking_book(
                    delivery=delivery, slot_id=form.cleaned_data["slot"].pk, by=BookedBy.STAFF,
                    staff_user=request.user.get_username(),
                )  # fmt: skip
            except BookingRefused as refusal:
                form.add_error(None, str(refusal.message))
            else:
                self.message_user(request, f"{delivery.reference} is booked for {result.slot}.")
                return redirect("admin:scheduling_booking_changelist")
        context = {**self.admin_site.each_context(request), "title": "Book or move a delivery", "form": form,
                   "opts": self.model._meta}  # fmt: skip
        return TemplateResponse(request, "scheduling/admin_book.html", context)

    @admin.action(description="Cancel the selected bookings (give their places back)")
    def cancel_bookings(self, request: HttpRequest, queryset: QuerySet[Booking]) -> None:
        cancelled = sum(
            booking_cancel(
                delivery=booking.delivery, by=BookedBy.STAFF, staff_user=request.user.get_username()
            )
            for booking in queryset.select_related("delivery")
        )
        self.message_user(request, f"{cancelled} booking(s) cancelled.")
