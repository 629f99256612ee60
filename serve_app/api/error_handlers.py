"""Every failure leaves the API as an Anthropic-style error body with the request id."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from serve_app.errors import (
    InvalidRequest,
    NotFound,
    RequestTooLarge,
    ThreadgateError,
)

logger = logging.getLogger(__name__)


def request_id_of(request: Request) -> str:
    return request.state.request_id


def error_response(error: ThreadgateError, request_id: str) -> Response:
    return Response(
        orjson.dumps(error.body(request_id)),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers,
    )


def describe_validation_error(errors: list[dict[str, Any]]) -> str:
    """'max_tokens: Input should be a valid integer, got "abc"' for the first few errors."""
    parts = []
    for error in errors[:3]:
        location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query")]
        field = ".".join(location) or "body"
        if error.get("type") == "json_invalid":
            parts.append(
                f"body: not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})"
            )
            continue
        message = error.get("msg", "invalid value")
        if field == "body" and isinstance(error.get("input"), bytes | str):
            # FastAPI parses JSON only when the client says it is JSON.
            parts.append("body: must be a JSON object sent with Content-Type: application/json")
            continue
        if error.get("type") == "missing":
            parts.append(f"{field}: field required")
            continue
        received = orjson.dumps(error.get("input"), default=str).decode()
        if len(received) > 80:
            received = received[:77] + "..."
        parts.append(f"{field}: {message}, got {received}")
    if len(errors) > 3:
        parts.append(f"and {len(errors) - 3} more")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ThreadgateError)
    async def _known(request: Request, error: ThreadgateError) -> Response:
        if error.status >= 500:
            logger.warning("request %s failed: %r", request_id_of(request), error)
        return error_response(error, request_id_of(request))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> Response:
        message = describe_validation_error(list(error.errors()))
        return error_response(InvalidRequest(message), request_id_of(request))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException) -> Response:
        if error.status_code == 413:
            mapped: ThreadgateError = RequestTooLarge(
                f"request body is larger than the limit of {request.app.state.max_body_bytes} bytes"
            )
        elif error.status_code == 404:
            mapped = NotFound(f"no route for {request.method} {request.url.path}")
        elif error.status_code == 405:
            mapped = InvalidRequest(f"method {request.method} is not allowed on {request.url.path}")
        else:
            mapped = InvalidRequest(str(error.detail))
        return error_response(mapped, request_id_of(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> Response:
        logger.exception("request %s failed unexpectedly", request_id_of(request))
        internal = ThreadgateError("internal error; the request id identifies it in our logs")
        return error_response(internal, request_id_of(request))
