"""Reading a streamed turn the way a plain HTTP client does: line by line, `data:` only."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class ReadStream:
    events: list[dict[str, Any]] = field(default_factory=list)
    raw: bytes = b""  # every byte received, to look for U+FFFD

    @property
    def types(self) -> list[str]:
        return [event["type"] for event in self.events]

    @property
    def text(self) -> str:
        """What a client that reads only `text_delta` events shows."""
        return "".join(
            event["delta"]["text"]
            for event in self.events
            if event["type"] == "content_block_delta" and event["delta"]["type"] == "text_delta"
        )

    def first(self, kind: str) -> dict[str, Any]:
        return next(event for event in self.events if event["type"] == kind)


async def read_stream(
    response: httpx.Response, *, stop_after_first_delta: bool = False
) -> ReadStream:
    """The events of a streamed response; optionally stop reading at the first text delta."""
    read = ReadStream()
    async for line in response.aiter_lines():
        read.raw += line.encode() + b"\n"
        if not line.startswith("data:"):
            continue
        event = json.loads(line[len("data:") :])
        read.events.append(event)
        if stop_after_first_delta and event["type"] == "content_block_delta":
            break
    return read


def stored_text(message: dict[str, Any]) -> str:
    return "".join(block["text"] for block in message["content"] if block["type"] == "text")
