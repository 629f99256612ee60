"""The sandbox's aiohttp application: routes, stats, delays, injected failures, streaming.

One handler serves both model endpoints; the wire format decides shapes and wording. Any
API key is accepted, since the point is to run the real adapters without a paid key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from itertools import cycle
from typing import Any

import orjson
from aiohttp import web

from serve_app.sandbox.answer import compose_answer
from serve_app.sandbox.anthropic_wire import AnthropicWire
from serve_app.sandbox.failures import FailureBook
from serve_app.sandbox.openai_wire import OpenAIWire
from serve_app.sandbox.script import Directives, read_script
from serve_app.sandbox.stats import SandboxStats
from serve_app.sandbox.wire import InvalidWireRequest, WireFormat

logger = logging.getLogger(__name__)

STATS = web.AppKey("sandbox_stats", SandboxStats)
FAILURES = web.AppKey("sandbox_failures", FailureBook)

# Generous: the gateway may send long histories with images.
REQUEST_MAX_BYTES = 64 * 1024 * 1024

# Statuses after which clients are told they may retry at once, as the providers do with
# Retry-After on rate limits and overload.
RETRY_AFTER_STATUSES = frozenset({429, 503, 529})

# sandbox:split_utf8 writes 1, 2, 3, 1, 2, 3... bytes at a time: with 3- and 4-byte
# characters (CJK, emoji) in the text, some writes are bound to end inside a character.
SPLIT_PIECE_BYTES = (1, 2, 3)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app() -> web.Application:
    app = web.Application(client_max_size=REQUEST_MAX_BYTES)
    app[STATS] = SandboxStats()
    app[FAILURES] = FailureBook()

    app.router.add_post("/v1/messages", _model_endpoint(AnthropicWire()))
    app.router.add_post("/v1/chat/completions", _model_endpoint(OpenAIWire()))
    app.router.add_get("/sandbox/stats", _get_stats)
    app.router.add_post("/sandbox/stats/reset", _reset_stats)
    return app


def _model_endpoint(wire: WireFormat) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await _answer(request, wire)

    return handle


async def _answer(request: web.Request, wire: WireFormat) -> web.StreamResponse:
    stats = request.app[STATS]
    stats.count_call(wire.api)

    try:
        raw_body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        message = f"the request body is larger than {REQUEST_MAX_BYTES} bytes"
        return _json(wire.render_error(413, message), status=413)

    try:
        body = orjson.loads(raw_body)
    except orjson.JSONDecodeError:
        return _json(wire.render_error(400, "the request body is not valid JSON"), status=400)
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        stats.count_model(body["model"])

    try:
        wire_request = wire.read_request(body)
    except InvalidWireRequest as error:
        return _json(wire.render_error(400, error.message, error.param), status=400)

    script = read_script(wire_request.conversation.newest_user_text)
    directives = script.directives
    if directives.delay_ms:
        await asyncio.sleep(directives.delay_ms / 1000)

    fail_status = directives.fail_status
    if fail_status is not None and request.app[FAILURES].should_fail(
        raw_body, directives.fail_attempts
    ):
        stats.injected_failures += 1
        return _injected_failure(wire, fail_status)

    answer = compose_answer(wire_request.conversation, script)
    if not wire_request.stream:
        return _json(wire.render_message(answer, wire_request))

    stats.streams += 1
    return await _stream(request, wire.render_stream(answer, wire_request), directives)


def _injected_failure(wire: WireFormat, status: int) -> web.Response:
    message = f"sandbox:fail={status} asked for this failure"
    headers = {"retry-after": "0"} if status in RETRY_AFTER_STATUSES else None
    return _json(wire.render_error(status, message), status=status, headers=headers)


async def _stream(
    request: web.Request, events: list[bytes], directives: Directives
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
    )
    await response.prepare(request)
    pause_s = directives.stream_delay_ms / 1000

    try:
        for index, event in enumerate(events):
            if index == directives.stream_cut:
                # A provider that fails mid-answer: the connection drops without the end
                # of the chunked body, and the client sees a response cut off.
                if request.transport is not None:
                    request.transport.abort()
                return response
            if index and pause_s:
                await asyncio.sleep(pause_s)

            if not directives.split_utf8:
                await response.write(event)
                continue
            # Each write goes to the socket at once (the transport has TCP_NODELAY and
            # sends immediately while its buffer is empty), so the pieces arrive apart.
            for piece in split_bytes(event):
                await response.write(piece)
        await response.write_eof()
    except ConnectionResetError:
        # The client left mid-stream (a test of disconnects does this on purpose).
        logger.debug("sandbox stream client disconnected")
    return response


def split_bytes(data: bytes) -> Iterator[bytes]:
    """`data` in pieces of 1 to 3 bytes, cutting through multi-byte characters on purpose."""
    start = 0
    for size in cycle(SPLIT_PIECE_BYTES):
        if start >= len(data):
            return
        yield data[start : start + size]
        start += size


async def _get_stats(request: web.Request) -> web.Response:
    return _json(request.app[STATS].as_dict())


async def _reset_stats(request: web.Request) -> web.Response:
    # A reset starts a clean run: attempt counts of sandbox:fail=STATUSxK go too, so the
    # same request fails again in the next test.
    request.app[STATS].reset()
    request.app[FAILURES].clear()
    return _json(request.app[STATS].as_dict())


def _json(
    payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, headers=headers, content_type="application/json"
    )
