"""Server-sent events as the gateway writes them: the Anthropic streaming format.

https://docs.anthropic.com/en/docs/build-with-claude/streaming: each event is an `event:`
line naming its type and a `data:` line with the JSON, then a blank line.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from serve_app.canonical import StreamEvent
from serve_app.errors import ThreadgateError

PING = b'event: ping\ndata: {"type":"ping"}\n\n'

# Text of a replayed block goes out in pieces of this many characters, so a client that
# renders deltas as they come sees the same kind of stream as the first time.
REPLAY_DELTA_CHARS = 64


def encode_event(event: StreamEvent) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def error_event(error: BaseException, request_id: str) -> bytes:
    """A failure after the stream started, as the `error` event clients know how to read.

    Only a `ThreadgateError` carries a message meant for clients; anything else is an
    internal error that the request id identifies in the logs.
    """
    if not isinstance(error, ThreadgateError):
        error = ThreadgateError("internal error; the request id identifies it in our logs")
    return encode_event(error.body(request_id))


def upstream_error_event(error: dict[str, Any], request_id: str) -> bytes:
    """An `error` event the upstream itself sent, passed on as it came."""
    return encode_event({"type": "error", "error": error, "request_id": request_id})


def message_events(message: dict[str, Any]) -> Iterator[bytes]:
    """A whole stored answer (the non-streamed message object) as a stream of events.

    Used to replay a streamed turn for a retried `Idempotency-Key`.
    """
    usage = message.get("usage") or {}
    start = {key: value for key, value in message.items() if key != "cost_micros"}
    start["content"] = []
    start["stop_reason"] = None
    start["usage"] = {**usage, "output_tokens": 0}
    yield encode_event({"type": "message_start", "message": start})

    for index, block in enumerate(message.get("content") or []):
        yield from _block_events(index, block)

    yield encode_event(
        {
            "type": "message_delta",
            "delta": {"stop_reason": message.get("stop_reason"), "stop_sequence": None},
            "usage": {"output_tokens": usage.get("output_tokens", 0)},
        }
    )
    yield encode_event({"type": "message_stop", "cost_micros": message.get("cost_micros")})


def _block_events(index: int, block: dict[str, Any]) -> Iterator[bytes]:
    kind = block.get("type")
    if kind == "text":
        yield _block_start(index, {**block, "text": ""})
        text = block.get("text", "")
        for start in range(0, len(text), REPLAY_DELTA_CHARS):
            piece = text[start : start + REPLAY_DELTA_CHARS]
            delta = {"type": "text_delta", "text": piece}
            yield encode_event({"type": "content_block_delta", "index": index, "delta": delta})
    elif kind == "tool_use":
        yield _block_start(index, {**block, "input": {}})
        partial_json = orjson.dumps(block.get("input") or {}).decode()
        delta = {"type": "input_json_delta", "partial_json": partial_json}
        yield encode_event({"type": "content_block_delta", "index": index, "delta": delta})
    else:
        yield _block_start(index, block)
    yield encode_event({"type": "content_block_stop", "index": index})


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    return encode_event({"type": "content_block_start", "index": index, "content_block": block})
