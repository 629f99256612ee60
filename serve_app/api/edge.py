"""The HTTP edge as plain ASGI: a request id on every request and response, and the one
access-log line per request.

Plain ASGI rather than Starlette's BaseHTTPMiddleware: it adds no task or stream
wrapping per request, and streamed responses pass through untouched.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.errors import RequestTooLarge
from serve_app.ids import new_request_id

logger = logging.getLogger("threadgate.access")

REQUEST_ID_HEADER = b"request-id"


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self._app = app
        self._max_body_bytes = max_body_bytes

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
            declared = _declared_length(scope)
            if declared is not None and declared > self._max_body_bytes:
                # Refused before reading a byte.
                await _send_too_large(send_with_id, declared, self._max_body_bytes, request_id)
            else:
                await self._app(scope, self._counted(receive), send_with_id)
        finally:
            latency_ms = (time.perf_counter() - started) * 1000
            logger.info(
                "request_id=%s method=%s path=%s key_id=%s thread_id=%s model=%s status=%d "
                "latency_ms=%.1f",
                request_id,
                _loggable(scope["method"]),
                _loggable(scope["path"]),
                state.get("key_id", "-"),
                _loggable(state.get("thread_id", "-")),
                _loggable(state.get("model", "-")),
                status or 500,
                latency_ms,
            )

    def _counted(self, receive: Receive) -> Receive:
        """Counts body bytes as they arrive, for bodies sent without a Content-Length."""
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max_body_bytes:
                    # FastAPI lets HTTPException out of body parsing untouched; the
                    # app's handler turns it into the JSON 413.
                    raise HTTPException(status_code=413)
            return message

        return counted_receive


def _loggable(value: str) -> str:
    """The client's value as one token of the log line: a newline or a space in a path or
    a model name must not be able to forge a line, or a field, of its own."""
    if value.isprintable() and " " not in value:
        return value
    escaped = value.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return f'"{escaped}"'


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_too_large(send: Send, declared: int, limit: int, request_id: str) -> None:
    error = RequestTooLarge(f"request body is {declared} bytes; the limit is {limit} bytes")
    body = orjson.dumps(error.body(request_id))
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
