from __future__ import annotations

from django.urls import URLPattern, re_path

from tracking.consumers import TrackingConsumer

# Any token-ish segment reaches the consumer, which refuses unknown ones before accept.
websocket_urlpatterns: list[URLPattern] = [
    re_path(r"^ws/t/(?P<token>[^/]{1,100})/$", TrackingConsumer.as_asgi()),
]
