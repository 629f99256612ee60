"""History windows (invariant 7): what of a thread is sent to the model with a new turn.

The window is the last `max_turns` turns (the new one included), then the oldest turns
are dropped until the prompt fits the model's context window minus `max_tokens`. Cuts
fall only between turns, so a window always starts with a user message and a `tool_use`
never travels without its `tool_result`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.canonical import Message
from serve_app.errors import InvalidRequest
from serve_app.stores.turn_state import WindowEntry


@dataclass(frozen=True, slots=True)
class HistoryWindow:
    messages: list[Message]
    tokens: int  # the stored estimates of every message in the window
    turns: int


def _turn_tokens(turn: list[WindowEntry]) -> int:
    return sum(entry["tokens"] for entry in turn)


def _sendable(turn: list[WindowEntry]) -> list[Message]:
    """A stored turn as messages a provider accepts.

    A turn cut short can end with an assistant `tool_use` that never got its result, or
    with a text block that had not received a character yet; providers reject both
    ("text content blocks must contain non-whitespace text"), so such blocks are dropped,
    and so are assistant messages left with no content at all.
    """
    messages: list[Message] = []
    for index, entry in enumerate(turn):
        content: list[dict[str, Any]] = entry["content"]
        is_last = index == len(turn) - 1
        if entry["role"] == "assistant":
            content = [block for block in content if not _blank_text(block)]
        if entry["role"] == "assistant" and is_last:
            content = [block for block in content if block.get("type") != "tool_use"]
        if entry["role"] == "assistant" and not content:
            continue
        messages.append({"role": entry["role"], "content": content})
    return messages


def _blank_text(block: dict[str, Any]) -> bool:
    return block.get("type") == "text" and not block.get("text", "").strip()


def build_window(
    stored_turns: list[list[WindowEntry]],
    new_turn: list[WindowEntry],
    budget_tokens: int,
    max_turns: int,
) -> HistoryWindow:
    """The messages to send: `stored_turns` (oldest first) trimmed, then `new_turn`."""
    needed = _turn_tokens(new_turn)
    if needed > budget_tokens:
        raise InvalidRequest(
            f"content: the new message needs about {needed} tokens, but the model's context "
            f"window leaves {max(budget_tokens, 0)} after max_tokens; shorten the message "
            "or lower max_tokens"
        )

    kept: list[list[WindowEntry]] = []
    total = needed
    for turn in reversed(stored_turns[-(max_turns - 1) :] if max_turns > 1 else []):
        cost = _turn_tokens(turn)
        if total + cost > budget_tokens:
            break
        kept.append(turn)
        total += cost
    kept.reverse()

    messages: list[Message] = []
    for turn in [*kept, new_turn]:
        messages.extend(_sendable(turn))
    return HistoryWindow(messages=messages, tokens=total, turns=len(kept) + 1)
