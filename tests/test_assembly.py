"""Folding an Anthropic event stream back into the answer the gateway persists."""

import pytest

from serve_app.canonical import Usage
from serve_app.errors import UpstreamError
from serve_app.providers.assembly import StreamAssembler

# An Anthropic stream as the Messages API sends it: usage split between start and end.
ANTHROPIC_EVENTS = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "usage": {
                "input_tokens": 25,
                "output_tokens": 1,
                "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": None,
            },
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " me."}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"city": '},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'},
    },
    {"type": "content_block_stop", "index": 1},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 40},
    },
    {"type": "message_stop"},
]


def assemble(events):
    assembler = StreamAssembler()
    for event in events:
        assembler.feed(event)
    return assembler


def test_whole_stream_becomes_the_answer_with_usage_overlaid():
    answer = assemble(ANTHROPIC_EVENTS).answer(upstream="anthropic")

    assert answer.upstream_id == "msg_1"
    assert answer.content == [
        {"type": "text", "text": "Let me."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert answer.stop_reason == "tool_use"
    assert answer.usage == Usage(input_tokens=25, output_tokens=40, cache_read_input_tokens=100)


def test_interrupted_stream_keeps_text_and_drops_the_unfinished_tool_call():
    assembler = assemble(ANTHROPIC_EVENTS[:8])

    assert assembler.content() == [{"type": "text", "text": "Let me."}]
    assert not assembler.finished
    assert assembler.stop_reason is None


def test_error_event_is_recorded():
    assembler = assemble(
        [*ANTHROPIC_EVENTS[:4], {"type": "error", "error": {"type": "overloaded_error"}}]
    )

    assert assembler.error == {"type": "overloaded_error"}
    assert assembler.content() == [{"type": "text", "text": "Let"}]


def test_broken_tool_json_is_an_upstream_error():
    events = [
        *ANTHROPIC_EVENTS[6:7],
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"city"'},
        },
        {"type": "content_block_stop", "index": 1},
    ]

    with pytest.raises(UpstreamError, match="not JSON"):
        assemble(events).content()


def test_a_stream_cut_before_its_first_character_stores_no_empty_text():
    assembler = assemble(ANTHROPIC_EVENTS[:3])

    assert assembler.content() == []
