from __future__ import annotations

from tracking.routing import websocket_urlpatterns as tracking_websockets

websocket_urlpatterns = [*tracking_websockets]
