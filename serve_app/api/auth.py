"""Who is calling: the key behind `x-api-key` (or `Authorization: Bearer`)."""

from __future__ import annotations

from fastapi import Request

from serve_app.errors import AuthenticationFailed, PermissionDenied
from serve_app.services import Services
from serve_app.stores.keys import KeyRecord


def services_of(request: Request) -> Services:
    return request.app.state.services


async def current_key(request: Request) -> KeyRecord:
    secret = request.headers.get("x-api-key")
    if not secret:
        authorization = request.headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer":
            secret = token.strip()
    if not secret:
        raise AuthenticationFailed(
            "missing API key: send it in the x-api-key header (or Authorization: Bearer)"
        )

    key = await services_of(request).keys.authenticate(secret)
    request.state.key_id = key.id
    return key


async def admin_key(request: Request) -> KeyRecord:
    key = await current_key(request)
    if not key.is_admin:
        raise PermissionDenied(
            f"key {key.id} has standard scope; this endpoint needs an admin (master) key"
        )
    return key
