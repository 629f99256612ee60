"""The canonical shapes that cross the Gateway / ModelRouter boundary.

Canonical content is the Anthropic block format: messages are
`{"role": "user" | "assistant", "content": [block, ...]}` with `text`, `tool_use`,
`tool_result` and `image` blocks, plain JSON dicts that are stored as they are.
Providers with another wire shape translate to and from these at the router.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Block = dict[str, Any]
Message = dict[str, Any]
StreamEvent = dict[str, Any]  # an Anthropic streaming event: {"type": "message_start", ...}


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
        }


@dataclass(slots=True)
class ModelCall:
    """One request to a model, already resolved to a provider and its upstream model id."""

    provider: str  # "anthropic" | "openai" | "openai_compatible"
    upstream_model: str
    messages: list[Message]
    max_tokens: int
    system: str | list[Block] | None = None
    temperature: float | None = None
    tools: list[dict[str, Any]] | None = None  # Anthropic tool definitions
    tool_choice: dict[str, Any] | None = None  # Anthropic tool_choice
    request_id: str = ""


@dataclass(slots=True)
class ModelAnswer:
    """A complete (non-streamed) model answer, in canonical form."""

    upstream_id: str
    content: list[Block]
    stop_reason: str | None
    usage: Usage = field(default_factory=Usage)
    upstream: str = ""  # "sandbox" when the sandbox served it, else the provider name
