"""/v1/keys: mint, list, read (with current spend), change, revoke. Admin keys only."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from serve_app.api.auth import admin_key, services_of
from serve_app.api.json_route import JsonRoute
from serve_app.api.schemas import KeyCreate, KeyUpdate
from serve_app.api.views import json_response, key_view, page_view
from serve_app.clock import now_ms
from serve_app.errors import Conflict
from serve_app.money import usd_to_micros
from serve_app.stores.keys import KeyRecord

router = APIRouter(prefix="/v1/keys", route_class=JsonRoute)
AdminKey = Annotated[KeyRecord, Depends(admin_key)]


@router.post("")
async def mint_key(body: KeyCreate, caller: AdminKey, request: Request) -> Response:
    services = services_of(request)
    cap = None if body.max_spend_usd is None else usd_to_micros(body.max_spend_usd)
    key, secret = await services.keys.mint(
        caller.account_id, body.name, body.scope, cap, body.budget_period, now_ms()
    )

    spend = await services.spend.view(key.id, key.budget_period, now_ms())
    # The only time the secret leaves the gateway: it is stored as a hash alone.
    return json_response({**key_view(key, spend), "secret": secret}, status=201)


@router.get("")
async def list_keys(
    caller: AdminKey,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    keys, has_more = await services_of(request).keys.list(caller.account_id, limit, after_id)
    return json_response(page_view([key_view(key) for key in keys], has_more))


@router.get("/{key_id}")
async def read_key(key_id: str, caller: AdminKey, request: Request) -> Response:
    services = services_of(request)
    key = await services.keys.get(caller.account_id, key_id)
    spend = await services.spend.view(key.id, key.budget_period, now_ms())
    return json_response(key_view(key, spend))


@router.patch("/{key_id}")
async def update_key(key_id: str, body: KeyUpdate, caller: AdminKey, request: Request) -> Response:
    services = services_of(request)
    key = await services.keys.get(caller.account_id, key_id)
    if key.revoked_at_ms is not None:
        raise Conflict(f"key {key.id} is revoked and can no longer be changed")

    changes: dict[str, Any] = {}
    if "name" in body.model_fields_set:
        changes["name"] = body.name
    if "max_spend_usd" in body.model_fields_set:
        # An explicit null removes the cap.
        changes["max_spend_micros"] = (
            None if body.max_spend_usd is None else usd_to_micros(body.max_spend_usd)
        )
    if "budget_period" in body.model_fields_set:
        changes["budget_period"] = body.budget_period
    if changes:
        key = await services.keys.update(key, changes)

    spend = await services.spend.view(key.id, key.budget_period, now_ms())
    return json_response(key_view(key, spend))


@router.delete("/{key_id}")
async def revoke_key(key_id: str, caller: AdminKey, request: Request) -> Response:
    services = services_of(request)
    key = await services.keys.get(caller.account_id, key_id)
    live = key.revoked_at_ms is None
    if live and key.is_admin and await services.keys.live_admin_count(key.account_id) <= 1:
        # Nothing could mint keys for the account any more.
        raise Conflict(
            f"key {key.id} is the account's last admin key; mint another admin key first"
        )
    key = await asyncio.shield(services.keys.revoke(key, now_ms()))
    return json_response(key_view(key))
