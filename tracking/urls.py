from __future__ import annotations

from django.urls import include, path

from tracking import views, views_api

urlpatterns = [
    path("api/v1/events", views_api.events_receive, name="events_receive"),
    path("api/v1/integrations/", include("tracking.integrations.urls")),
    path("api/v1/openapi.json", views_api.openapi_document, name="openapi_document"),
    path("t/<str:token>/", views.tracking_page, name="tracking_page"),
    path("t/<str:token>/state/", views.tracking_state, name="tracking_state"),
    path("t/<str:token>/instructions/", views.tracking_instructions, name="tracking_instructions"),
    path("t/<str:token>/feedback/", views.tracking_feedback, name="tracking_feedback"),
    path("t/<str:token>/proof/photo/", views.tracking_proof_photo, name="tracking_proof_photo"),
]
