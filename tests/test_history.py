"""History windows: turn boundaries, the 50-turn cap, the token budget."""

from __future__ import annotations

import pytest

from serve_app.engine.history import build_window
from serve_app.errors import InvalidRequest


def text(role: str, body: str, seq: int, tokens: int = 10) -> dict:
    return {"seq": seq, "role": role, "content": [{"type": "text", "text": body}], "tokens": tokens}


def turn(number: int, tokens: int = 10) -> list[dict]:
    seq = number * 2 + 1
    return [
        text("user", f"q{number}", seq, tokens),
        text("assistant", f"a{number}", seq + 1, tokens),
    ]


NEW = [text("user", "now", 999)]


def texts(window) -> list[str]:
    return [message["content"][0]["text"] for message in window.messages]


def test_everything_fits():
    window = build_window([turn(0), turn(1)], NEW, budget_tokens=1_000, max_turns=50)

    assert texts(window) == ["q0", "a0", "q1", "a1", "now"]
    assert window.tokens == 50
    assert window.turns == 3


def test_keeps_the_last_fifty_turns_including_the_new_one():
    stored = [turn(number) for number in range(60)]

    window = build_window(stored, NEW, budget_tokens=10**6, max_turns=50)

    assert window.turns == 50
    assert texts(window)[:2] == ["q11", "a11"]
    assert texts(window)[-1] == "now"


def test_trims_oldest_whole_turns_to_the_budget_and_starts_with_a_user():
    stored = [turn(0), turn(1), turn(2)]

    window = build_window(stored, NEW, budget_tokens=55, max_turns=50)

    # 10 for the new message; each turn costs 20: two of the three fit in 55.
    assert texts(window) == ["q1", "a1", "q2", "a2", "now"]
    assert window.messages[0]["role"] == "user"


def test_never_splits_a_tool_use_from_its_result():
    tool_turn = [
        text("user", "look it up", 1),
        {
            "seq": 2,
            "role": "assistant",
            "tokens": 10,
            "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}],
        },
        {
            "seq": 3,
            "role": "user",
            "tokens": 10,
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}],
        },
        text("assistant", "found it", 4),
    ]

    trimmed = build_window([tool_turn], NEW, budget_tokens=45, max_turns=50)
    kept = build_window([tool_turn], NEW, budget_tokens=50, max_turns=50)

    assert texts(trimmed) == ["now"]
    assert [message["role"] for message in kept.messages] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]


def test_an_unanswered_tool_use_at_the_end_of_a_turn_is_dropped():
    cut_short = [
        text("user", "look it up", 1),
        {
            "seq": 2,
            "role": "assistant",
            "tokens": 10,
            "content": [
                {"type": "text", "text": "Calling tools: lookup."},
                {"type": "tool_use", "id": "t1", "name": "lookup", "input": {}},
            ],
        },
    ]

    window = build_window([cut_short], NEW, budget_tokens=1_000, max_turns=50)

    assert window.messages[1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Calling tools: lookup."}],
    }


def test_a_new_message_larger_than_the_budget_is_refused():
    with pytest.raises(InvalidRequest, match="needs about 10 tokens"):
        build_window([], NEW, budget_tokens=9, max_turns=50)


def test_blank_text_left_by_a_cut_stream_is_never_sent():
    # Stored before blank blocks were dropped at the source: a stream cut before its first
    # character, and one cut after a single space.
    empty = [text("user", "first", 1), text("assistant", "", 2)]
    blank = [
        text("user", "second", 3),
        {
            "seq": 4,
            "role": "assistant",
            "tokens": 10,
            "content": [{"type": "text", "text": " "}, {"type": "text", "text": "kept"}],
        },
    ]

    window = build_window([empty, blank], NEW, budget_tokens=1_000, max_turns=50)

    assert window.messages == [
        {"role": "user", "content": [{"type": "text", "text": "first"}]},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "kept"}]},
        {"role": "user", "content": [{"type": "text", "text": "now"}]},
    ]
