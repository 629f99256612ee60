"""/v1/threads: one per conversation. Standard keys see the threads they created."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from serve_app.api.auth import current_key, services_of
from serve_app.api.idempotent import idempotent
from serve_app.api.json_route import JsonRoute
from serve_app.api.schemas import INT64_MAX, MAX_ID_CHARS, ThreadCreate
from serve_app.api.views import json_response, message_view, page_view, thread_view
from serve_app.clock import now_ms
from serve_app.stores.keys import KeyRecord

router = APIRouter(prefix="/v1/threads", route_class=JsonRoute)
AnyKey = Annotated[KeyRecord, Depends(current_key)]


@router.post("")
async def create_thread(body: ThreadCreate, key: AnyKey, request: Request) -> Response:
    services = services_of(request)

    async def create() -> Response:
        thread = await services.threads.create(key, body.end_user_id, body.metadata, now_ms())
        request.state.thread_id = thread.id
        return json_response(thread_view(thread), status=201)

    return await idempotent(request, key, create)


@router.get("")
async def list_threads(
    key: AnyKey,
    request: Request,
    end_user_id: Annotated[str | None, Query(min_length=1, max_length=MAX_ID_CHARS)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    threads, has_more = await services_of(request).threads.list(key, end_user_id, limit, after_id)
    return json_response(page_view([thread_view(thread) for thread in threads], has_more))


@router.get("/{thread_id}")
async def read_thread(thread_id: str, key: AnyKey, request: Request) -> Response:
    request.state.thread_id = thread_id
    thread = await services_of(request).threads.get_visible(key, thread_id)
    return json_response(thread_view(thread))


@router.delete("/{thread_id}")
async def delete_thread(thread_id: str, key: AnyKey, request: Request) -> Response:
    request.state.thread_id = thread_id
    services = services_of(request)
    thread = await services.threads.get_visible(key, thread_id)

    async def delete() -> None:
        # Under the turn lock, so a turn in flight finishes before its thread goes.
        async with services.turn_state.turn(thread.id) as held:
            await services.messages.delete_thread(thread.id)
            await services.turn_state.forget(held)
            await services.threads.delete(thread)

    await asyncio.shield(delete())
    return json_response({"id": thread.id, "type": "thread_deleted", "deleted": True})


@router.get("/{thread_id}/messages")
async def list_messages(
    thread_id: str,
    key: AnyKey,
    request: Request,
    after_seq: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Response:
    request.state.thread_id = thread_id
    services = services_of(request)
    thread = await services.threads.get_visible(key, thread_id)

    messages, has_more = await services.messages.page(thread.id, after_seq, limit)
    return json_response(
        {
            "data": [message_view(message) for message in messages],
            "has_more": has_more,
            "first_seq": messages[0].seq if messages else None,
            "last_seq": messages[-1].seq if messages else None,
        }
    )
