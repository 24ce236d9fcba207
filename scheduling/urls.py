from __future__ import annotations

from django.urls import path

from scheduling import views

urlpatterns = [
    path("t/<str:token>/slots/", views.slots_page, name="slots_page"),
]
