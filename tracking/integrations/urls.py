from __future__ import annotations

from django.urls import URLPattern, path

from tracking.integrations import views

urlpatterns: list[URLPattern] = [
    path("onfleet/", views.onfleet_webhook, name="integrations_onfleet"),
    path("spoke/", views.spoke_webhook, name="integrations_spoke"),
]
