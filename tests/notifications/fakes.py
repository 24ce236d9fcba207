"""The one fake: Twilio's HTTP edge. The real `twilio` client builds and parses everything."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from twilio.http import HttpClient
from twilio.http.response import Response


class RecordingTwilioHttp(HttpClient):
    """Records each request the Twilio client makes and answers like the Messages API."""

    def __init__(self, answer: Callable[[int], tuple[int, dict[str, Any]]] | None = None) -> None:
        super().__init__(logging.getLogger("fake-twilio"), is_async=False)
        self.requests: list[dict[str, Any]] = []
        self.answer = answer or (lambda n: (201, {"sid": f"SM{n:032d}", "status": "queued"}))
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        uri: str,
        params: Any = None,
        data: Any = None,
        headers: Any = None,
        auth: Any = None,
        timeout: Any = None,
        allow_redirects: bool = False,
    ) -> Response:
        with self._lock:
            self.requests.append({"method": method, "uri": uri, "data": dict(data or {}), "auth": auth})
            status, body = self.answer(len(self.requests))
        return Response(status, json.dumps(body))


def twilio_error(code: int, status: int = 400) -> tuple[int, dict[str, Any]]:
    return status, {"code": code, "message": f"error {code}", "more_info": "", "status": status}
