"""Every failure leaves the API as an Anthropic-style error body with the request id."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match, Route

from serve_app.errors import (
    InvalidRequest,
    MethodNotAllowed,
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


def _methods_for(request: Request) -> list[str]:
    """Every method some route takes at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.state.api_routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return sorted(methods - {"HEAD"})


def describe_validation_error(errors: list[dict[str, Any]], body: Any = None) -> str:
    """'max_tokens: Input should be a valid integer, got "abc"' for the first few fields.

    Where a field accepts several shapes (a string or a list of blocks), pydantic reports
    one error per shape; the one that got furthest into the value is the one that names
    the real mistake, so only that one is kept per field.
    """
    deepest: dict[str, tuple[int, str]] = {}
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = error.get("ctx", {}).get("error", "parse error")
            return f"body: not valid JSON ({reason})"
        path = _path_in_body(error.get("loc", ()), body)
        top = path[0] if path else "body"
        if top not in deepest or len(path) > deepest[top][0]:
            deepest[top] = (len(path), _describe_one(".".join(path) or "body", error))

    parts = [description for _, description in deepest.values()]
    if len(parts) > 3:
        parts = [*parts[:3], f"and {len(parts) - 3} more"]
    return "; ".join(parts)


def _path_in_body(location: tuple[Any, ...] | list[Any], body: Any) -> list[str]:
    """The error's location as the client sees it: the keys and indexes of its own body,
    without pydantic's names for union members and tags."""
    parts = [part for part in location if part not in ("body", "query", "path")]
    if body is None:
        return [str(part) for part in parts if isinstance(part, int) or "[" not in str(part)]
    path: list[str] = []
    current = body
    for index, part in enumerate(parts):
        in_dict = isinstance(current, dict) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if in_dict or in_list:
            current = current[part]
            path.append(str(part))
        elif isinstance(current, dict) and index == len(parts) - 1:
            path.append(str(part))  # a field the body left out
        # Anything else names a union member or a discriminator value, not the body.
    return path


def _describe_one(field: str, error: dict[str, Any]) -> str:
    received = error.get("input")
    if field == "body" and isinstance(received, bytes):
        # FastAPI parses JSON only when the client says it is JSON.
        return "body: must be JSON sent with Content-Type: application/json"
    if field == "body" and not isinstance(received, dict):
        return f"body: must be a JSON object, got {_echo(received)}"
    if error.get("type") == "missing":
        return f"{field}: field required"
    return f"{field}: {error.get('msg', 'invalid value')}, got {_echo(received)}"


def _echo(value: Any, limit: int = 80) -> str:
    """The received value as JSON, shortened; never fails, whatever the value holds."""
    try:
        text = orjson.dumps(value, default=str).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ThreadgateError)
    async def _known(request: Request, error: ThreadgateError) -> Response:
        if error.status >= 500:
            logger.warning("request %s failed: %r", request_id_of(request), error)
        return error_response(error, request_id_of(request))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> Response:
        message = describe_validation_error(list(error.errors()), error.body)
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
            allowed = ", ".join(_methods_for(request))
            mapped = MethodNotAllowed(
                f"method {request.method} is not allowed on {request.url.path}; use {allowed}",
                allowed,
            )
        else:
            mapped = InvalidRequest(str(error.detail))
        return error_response(mapped, request_id_of(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> Response:
        logger.exception("request %s failed unexpectedly", request_id_of(request))
        internal = ThreadgateError("internal error; the request id identifies it in our logs")
        return error_response(internal, request_id_of(request))
