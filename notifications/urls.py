from __future__ import annotations

from collections.abc import Callable
from typing import Any

from anymail.urls import urlpatterns as anymail_patterns
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.urls import URLPattern, URLResolver, include, path
from django.views.decorators.csrf import csrf_exempt

from notifications import views


def _needs_secret(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """anymail accepts anyone when ANYMAIL_WEBHOOK_SECRET is unset; we accept no one then."""

    @csrf_exempt
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not getattr(settings, "ANYMAIL", {}).get("WEBHOOK_SECRET"):
            return HttpResponseBadRequest("webhook secret not configured")
        return view(request, *args, **kwargs)

    return guarded


_anymail = [
    URLPattern(p.pattern, _needs_secret(p.callback), p.default_args, p.name)
    for p in anymail_patterns
    if isinstance(p, URLPattern)
]

urlpatterns: list[URLPattern | URLResolver] = [
    path("webhooks/twilio/inbound/", views.twilio_inbound, name="twilio_inbound"),
    path("webhooks/twilio/status/", views.twilio_status, name="twilio_status"),
    path("webhooks/anymail/", include((_anymail, "anymail"))),
    path("t/<str:token>/notifications/", views.preferences, name="notification_preferences"),
]
