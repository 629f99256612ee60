"""The contract between the sandbox server and a wire format (Anthropic, OpenAI).

A wire format reads a request body into a `WireRequest` (or raises `InvalidWireRequest`
with the provider's own wording) and renders an `Answer` as a JSON message, as a list of
stream events, or an error body. How an answer is cut into stream deltas is shared here,
so both formats stream the same pieces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from serve_app.errors import InvalidRequest
from serve_app.sandbox.answer import Answer, Conversation

WORDS_PER_TEXT_DELTA = 3
JSON_DELTA_MAX_CHARS = 16
JSON_DELTAS_MIN = 3

_WORD_OR_SPACE = re.compile(r"\S+|\s+")


class InvalidWireRequest(InvalidRequest):
    """A request the real provider would refuse with 400; `param` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)
class WireRequest:
    model: str
    stream: bool
    conversation: Conversation
    include_usage: bool = False  # OpenAI's stream_options.include_usage


class WireFormat(Protocol):
    api: str  # "anthropic" | "openai": the key of this format in the stats

    def read_request(self, body: Any) -> WireRequest: ...

    def render_message(self, answer: Answer, request: WireRequest) -> dict[str, Any]: ...

    def render_stream(self, answer: Answer, request: WireRequest) -> list[bytes]: ...

    def render_error(
        self, status: int, message: str, param: str | None = None
    ) -> dict[str, Any]: ...


def text_deltas(text: str) -> list[str]:
    """`text` in pieces of a few words each; joined they give `text` back exactly."""
    deltas: list[str] = []
    piece: list[str] = []
    words_in_piece = 0

    for part in _WORD_OR_SPACE.findall(text):
        # Whitespace opens the next piece, as providers put the space before a word.
        if words_in_piece == WORDS_PER_TEXT_DELTA and part.isspace():
            deltas.append("".join(piece))
            piece, words_in_piece = [], 0
        piece.append(part)
        if not part.isspace():
            words_in_piece += 1

    if piece:
        deltas.append("".join(piece))
    return deltas


def json_deltas(input_json: str) -> list[str]:
    """Fragments of a serialized tool input, several of them, cut anywhere as providers do."""
    size = max(1, min(JSON_DELTA_MAX_CHARS, len(input_json) // JSON_DELTAS_MIN))
    return [input_json[start : start + size] for start in range(0, len(input_json), size)]
