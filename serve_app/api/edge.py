"""The HTTP edge as plain ASGI: a request id on every request and response, and the one
access-log line per request.

Plain ASGI rather than Starlette's BaseHTTPMiddleware: it adds no task or stream
wrapping per request, and streamed responses pass through untouched.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.ids import new_request_id

logger = logging.getLogger("threadgate.access")

REQUEST_ID_HEADER = b"request-id"


class EdgeMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        started = time.perf_counter()
        request_id = new_request_id()
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER, request_id.encode()),
                ]
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            latency_ms = (time.perf_counter() - started) * 1000
            logger.info(
                "request_id=%s method=%s path=%s key_id=%s thread_id=%s model=%s status=%d "
                "latency_ms=%.1f",
                request_id,
                scope["method"],
                scope["path"],
                state.get("key_id", "-"),
                state.get("thread_id", "-"),
                state.get("model", "-"),
                status or 500,
                latency_ms,
            )
