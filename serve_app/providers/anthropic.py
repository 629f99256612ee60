"""The Anthropic Messages API (https://docs.anthropic.com/en/api/messages).

Canonical content is already the Anthropic format, so requests go out as they are and
streamed events are passed through unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import orjson

from serve_app.canonical import ModelAnswer, ModelCall, StreamEvent, Usage
from serve_app.errors import UpstreamError
from serve_app.providers.base import Provider
from serve_app.providers.transport import Endpoint, Transport

ANTHROPIC_VERSION = "2023-06-01"

# After either of these the stream carries nothing more for the gateway.
FINAL_EVENT_TYPES = frozenset({"message_stop", "error"})


class AnthropicProvider(Provider):
    def __init__(self, *, base_url: str, api_key: str, label: str, transport: Transport) -> None:
        endpoint = Endpoint(
            provider="anthropic",
            label=label,
            url=f"{base_url.rstrip('/')}/v1/messages",
            headers={
                "x-api-key": api_key,
                "anthropic-version": ANTHROPIC_VERSION,
                "content-type": "application/json",
            },
            credential_hint="ANTHROPIC_API_KEY",
        )
        super().__init__(endpoint, transport)

    async def complete(self, call: ModelCall) -> ModelAnswer:
        body = orjson.dumps(messages_request(call, stream=False))
        message = await self._transport.post_json(self._endpoint, body, call.request_id)
        return answer_from_message(message, upstream=self.label)

    async def stream(self, call: ModelCall) -> AsyncIterator[StreamEvent]:
        body = orjson.dumps(messages_request(call, stream=True))
        response = await self._transport.open_stream(self._endpoint, body, call.request_id)

        ended = False
        # aclosing: if the consumer stops early, the response is closed now, not whenever
        # the abandoned generator is collected.
        async with aclosing(
            self._transport.read_events(response, self._endpoint, call.request_id)
        ) as events:
            async for sse in events:
                # Read on to the end of the body after the final event: a fully read
                # response returns its connection to the pool, an abandoned one is closed.
                if ended:
                    continue
                event = _parse_event(sse.data)
                yield event
                ended = event.get("type") in FINAL_EVENT_TYPES

        if not ended:
            raise UpstreamError("the anthropic stream ended before message_stop")


def messages_request(call: ModelCall, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": call.upstream_model,
        "max_tokens": call.max_tokens,
        "messages": call.messages,
    }
    if call.system is not None:
        body["system"] = call.system
    if call.temperature is not None:
        body["temperature"] = call.temperature
    if call.tools is not None:
        body["tools"] = call.tools
    if call.tool_choice is not None:
        body["tool_choice"] = call.tool_choice
    if stream:
        body["stream"] = True
    return body


def answer_from_message(message: dict[str, Any], *, upstream: str) -> ModelAnswer:
    content = message.get("content")
    if not isinstance(content, list):
        raise UpstreamError("the anthropic upstream answered without a content list")
    return ModelAnswer(
        upstream_id=message.get("id", ""),
        content=content,
        stop_reason=message.get("stop_reason"),
        usage=usage_from_anthropic(message.get("usage")),
        upstream=upstream,
    )


def usage_from_anthropic(usage: dict[str, Any] | None) -> Usage:
    # The cache counts are null, not absent, on some answers.
    usage = usage or {}
    return Usage(
        input_tokens=usage.get("input_tokens") or 0,
        output_tokens=usage.get("output_tokens") or 0,
        cache_read_input_tokens=usage.get("cache_read_input_tokens") or 0,
        cache_creation_input_tokens=usage.get("cache_creation_input_tokens") or 0,
    )


def _parse_event(data: str) -> StreamEvent:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("the anthropic stream sent an event that is not JSON") from None
    if not isinstance(event, dict):
        raise UpstreamError("the anthropic stream sent an event that is not a JSON object")
    return event
