"""POST /v1/threads/{id}/messages: one turn of a conversation."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response, StreamingResponse

from serve_app.api.auth import current_key, services_of
from serve_app.api.idempotent import IdempotencyClaim, idempotent, replayed_headers
from serve_app.api.json_route import JsonRoute
from serve_app.api.schemas import TurnCreate
from serve_app.api.views import json_response
from serve_app.catalog import ModelSpec
from serve_app.engine.events import message_events
from serve_app.engine.stream import TurnStream
from serve_app.engine.turn import TurnEngine, TurnInput, TurnResult
from serve_app.errors import InvalidRequest
from serve_app.stores.keys import KeyRecord
from serve_app.stores.threads import ThreadRecord

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/threads", route_class=JsonRoute)
AnyKey = Annotated[KeyRecord, Depends(current_key)]
UPSTREAM_HEADER = "x-threadgate-upstream"
EVENT_STREAM = "text/event-stream"
_MAX_TEMPERATURE = {"anthropic": 1.0}


def _check_against_model(body: TurnCreate, spec: ModelSpec) -> None:
    if not 1 <= body.max_tokens <= spec.max_output_tokens:
        raise InvalidRequest(
            f"max_tokens must be between 1 and {spec.max_output_tokens} for {spec.name}, "
            f"got {body.max_tokens}"
        )
    highest = _MAX_TEMPERATURE.get(spec.provider, 2.0)
    if body.temperature is not None and body.temperature > highest:
        raise InvalidRequest(
            f"temperature must be between 0 and {highest} for {spec.name}, got {body.temperature}"
        )
    if body.tools:
        raise InvalidRequest(
            "tools: tool webhooks are not available in this version of threadgate; "
            "send the turn without tools"
        )
    if body.tool_choice is not None:
        raise InvalidRequest("tool_choice: only meaningful with tools, which this turn has none of")


@router.post("/{thread_id}/messages")
async def create_turn(thread_id: str, body: TurnCreate, key: AnyKey, request: Request) -> Response:
    request.state.thread_id = thread_id
    request.state.model = body.model
    services = services_of(request)
    spec = services.catalog.get(body.model)
    _check_against_model(body, spec)
    thread = await services.threads.get_visible(key, thread_id)

    turn = TurnInput(
        model=body.model,
        max_tokens=body.max_tokens,
        content=body.content_blocks(),
        system=body.system_value(),
        temperature=body.temperature,
        tool_choice=body.tool_choice,
        metadata=body.metadata,
    )

    if body.stream:
        return await _streamed_turn(request, key, thread, turn, spec)

    async def run() -> Response:
        engine = TurnEngine(services)
        # Once the upstream is called the turn must finish (persisted and billed) even if
        # the client hangs up: run it as its own task that a cancelled request can't stop.
        task = asyncio.create_task(engine.run(key, thread, turn, request.state.request_id))
        task.add_done_callback(_log_orphan_failure)
        services.turns_in_flight.track(task)
        result = await asyncio.shield(task)
        return json_response(
            result.response_body(), headers={UPSTREAM_HEADER: result.answer.upstream}
        )

    return await idempotent(request, key, run)


async def _streamed_turn(
    request: Request, key: KeyRecord, thread: ThreadRecord, turn: TurnInput, spec: ModelSpec
) -> Response:
    services = services_of(request)
    headers = {
        UPSTREAM_HEADER: services.router.upstream_label(spec.provider),
        "cache-control": "no-cache",
        # Proxies that buffer responses (nginx) pass this one through at once.
        "x-accel-buffering": "no",
    }

    claim = await IdempotencyClaim.take(request, key)
    if claim is not None and claim.stored is not None:
        replay = message_events(claim.stored.body)
        return StreamingResponse(
            replay, media_type=EVENT_STREAM, headers={**headers, **replayed_headers(claim.stored)}
        )

    async def remember(result: TurnResult | None) -> None:
        if claim is None:
            return
        if result is None:
            await claim.release()
        else:
            await claim.complete(200, result.response_body(), headers)

    stream = TurnStream(services, key, thread, turn, request.state.request_id, on_finished=remember)
    try:
        await stream.start()
    except BaseException:
        if claim is not None:
            await claim.release()
        raise
    return StreamingResponse(stream.body(), media_type=EVENT_STREAM, headers=headers)


def _log_orphan_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("turn task ended with %r", task.exception())
