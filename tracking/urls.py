from __future__ import annotations

from django.urls import path

from tracking import views_api

urlpatterns = [
    path("api/v1/events", views_api.events_receive, name="events_receive"),
    path("api/v1/openapi.json", views_api.openapi_document, name="openapi_document"),
]
