"""Rebuilding a whole answer from the Anthropic events of a stream.

The gateway forwards events to the client as they come and needs the same answer at the end
to persist and bill it; this is the one place that folds events back into content blocks.
"""

from __future__ import annotations

from typing import Any

import orjson

from serve_app.canonical import Block, ModelAnswer, StreamEvent, Usage
from serve_app.errors import UpstreamError

USAGE_FIELDS = frozenset(Usage.__slots__)  # type: ignore[attr-defined]

# Which field of a block each kind of delta extends.
DELTA_FIELDS = {
    "text_delta": ("text", "text"),
    "thinking_delta": ("thinking", "thinking"),
}


class StreamAssembler:
    """Feed every event of one stream; read the answer so far at any time.

    Usage is message_start's usage overlaid, field by field, with message_delta's: Anthropic
    reports input tokens at the start and output tokens at the end; a translated OpenAI
    stream reports zeros at the start and everything at the end.
    """

    def __init__(self) -> None:
        self.upstream_id = ""
        self.stop_reason: str | None = None
        self.error: dict[str, Any] | None = None
        self.finished = False  # message_stop seen
        self._usage: dict[str, int] = {}
        self._blocks: dict[int, Block] = {}
        self._parts: dict[int, list[str]] = {}  # text, thinking or partial JSON pieces
        self._closed: set[int] = set()

    def feed(self, event: StreamEvent) -> None:
        kind = event.get("type")
        if kind == "content_block_delta":
            self._delta(event["index"], event.get("delta") or {})
        elif kind == "content_block_start":
            index = event["index"]
            self._blocks[index] = dict(event["content_block"])
            self._parts[index] = []
        elif kind == "content_block_stop":
            self._closed.add(event["index"])
        elif kind == "message_start":
            message = event.get("message") or {}
            self.upstream_id = message.get("id", "")
            self._merge_usage(message.get("usage"))
        elif kind == "message_delta":
            self.stop_reason = (event.get("delta") or {}).get("stop_reason", self.stop_reason)
            self._merge_usage(event.get("usage"))
        elif kind == "message_stop":
            self.finished = True
        elif kind == "error":
            self.error = event.get("error") or {}

    @property
    def usage(self) -> Usage:
        return Usage(**self._usage)

    def content(self) -> list[Block]:
        """The blocks so far, in index order.

        A tool_use cut off before its block stopped has no usable input and is left out, so
        an interrupted turn never holds a tool call that cannot be answered; a text block
        cut off before its first character is left out too, as providers refuse empty text.
        """
        blocks: list[Block] = []
        for index in sorted(self._blocks):
            block = self._block(index)
            if block is not None:
                blocks.append(block)
        return blocks

    def answer(self, upstream: str) -> ModelAnswer:
        return ModelAnswer(
            upstream_id=self.upstream_id,
            content=self.content(),
            stop_reason=self.stop_reason,
            usage=self.usage,
            upstream=upstream,
        )

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        kind = delta.get("type")
        if kind in DELTA_FIELDS:
            self._parts[index].append(delta[DELTA_FIELDS[kind][1]])
        elif kind == "input_json_delta":
            self._parts[index].append(delta.get("partial_json", ""))
        elif kind == "signature_delta":
            self._blocks[index]["signature"] = delta.get("signature", "")

    def _block(self, index: int) -> Block | None:
        block = dict(self._blocks[index])
        joined = "".join(self._parts[index])
        kind = block.get("type")

        if kind == "tool_use":
            if index not in self._closed:
                return None
            block["input"] = _tool_input(joined) if joined else block.get("input") or {}
        elif kind == "text":
            block["text"] = block.get("text", "") + joined
            if not block["text"]:
                return None
        elif kind == "thinking":
            block["thinking"] = block.get("thinking", "") + joined
        return block

    def _merge_usage(self, usage: dict[str, Any] | None) -> None:
        for name, value in (usage or {}).items():
            if name in USAGE_FIELDS and isinstance(value, int):
                self._usage[name] = value


def _tool_input(partial_json: str) -> dict[str, Any]:
    try:
        tool_input = orjson.loads(partial_json)
    except orjson.JSONDecodeError:
        raise UpstreamError("the upstream streamed tool input that is not JSON") from None
    if not isinstance(tool_input, dict):
        raise UpstreamError("the upstream streamed tool input that is not a JSON object")
    return tool_input
