"""The product's URLs plus `/bench/hello`, the bare Django view that figures are compared with.

It lives here, not in config/, so that it is never part of the product."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from config.urls import urlpatterns as product_urlpatterns


@csrf_exempt
def hello(request: HttpRequest) -> HttpResponse:
    # Synchronous like the intake view, so both pay the same ASGI-to-thread hop.
    return HttpResponse(b"hello", content_type="text/plain")


urlpatterns = [path("bench/hello", hello), *product_urlpatterns]
