"""The sandbox upstream, over real HTTP on loopback, in both wire formats."""

from __future__ import annotations

import asyncio
import codecs
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from serve_app.sandbox import RunningSandbox, start_sandbox
from serve_app.sandbox.answer import FILLER_WORDS, _cut_to_tokens
from serve_app.sandbox.script import read_script
from serve_app.sandbox.server import split_bytes
from serve_app.sandbox.wire import json_deltas, text_deltas
from serve_app.tokens import count_text

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TIME_TOOL = {
    "name": "get_time",
    "description": "Local time in a timezone",
    "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}},
}
THREE_MESSAGES = [
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "What is the weather like in Paris today, and tomorrow too?"},
]
THREE_MESSAGES_ANSWER = (
    'Sandbox reply to "What is the weather like in Paris today," (3 messages in context)'
)


def openai_tool(tool: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool["name"],
            "description": tool["description"],
            "parameters": tool["input_schema"],
        },
    }


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[RunningSandbox]:
    running = await start_sandbox("127.0.0.1", 0)
    yield running
    await running.aclose()


@pytest.fixture(scope="module")
async def http(sandbox: RunningSandbox) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=sandbox.url) as session:
        yield session


async def anthropic(http: aiohttp.ClientSession, body: dict[str, Any]) -> tuple[int, Any]:
    headers = {"x-api-key": "sk-ant-anything", "anthropic-version": "2023-06-01"}
    async with http.post("/v1/messages", json=body, headers=headers) as response:
        return response.status, await response.json()


async def openai(http: aiohttp.ClientSession, body: dict[str, Any]) -> tuple[int, Any]:
    headers = {"authorization": "Bearer sk-anything"}
    async with http.post("/v1/chat/completions", json=body, headers=headers) as response:
        return response.status, await response.json()


async def stream_bytes(http: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> bytes:
    async with http.post(path, json=body) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        return await response.read()


def anthropic_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in raw.decode().split("\n\n")[:-1]:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        data = orjson.loads(data_line.removeprefix("data: "))
        assert data["type"] == event_line.removeprefix("event: ")
        events.append((data["type"], data))
    return events


def openai_chunks(raw: bytes) -> list[Any]:
    frames = raw.decode().split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    return [orjson.loads(frame.removeprefix("data: ")) for frame in frames[:-2]]


def streamed_text(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(
        data["delta"]["text"]
        for kind, data in events
        if kind == "content_block_delta" and data["delta"]["type"] == "text_delta"
    )


# --- reading the user message ---------------------------------------------------------------


def test_script_reads_directives_and_calls_and_keeps_the_rest():
    script = read_script(
        'sandbox:delay_ms=15 Look up call:get_weather({"city": "Paris (FR)"}) now '
        "sandbox:fail=429x2 sandbox:tokens=80 sandbox:stream_delay_ms=3 sandbox:split_utf8 "
        "sandbox:stream_cut=4 call:broken({not json}) done."
    )

    assert script.directives.delay_ms == 15
    assert script.directives.fail_status == 429
    assert script.directives.fail_attempts == 2
    assert script.directives.tokens == 80
    assert script.directives.stream_delay_ms == 3
    assert script.directives.split_utf8 is True
    assert script.directives.stream_cut == 4
    assert [(call.name, call.input) for call in script.calls] == [
        ("get_weather", {"city": "Paris (FR)"})
    ]
    # A malformed call is prose, and stays in the excerpt.
    assert script.excerpt == "Look up now call:broken({not json}) done"


def test_excerpt_counts_characters_and_keeps_emoji_and_cjk_whole():
    script = read_script("你好世界 🎉🎉 " * 10)

    assert script.excerpt == ("你好世界 🎉🎉 " * 10)[:40]
    assert len(script.excerpt) == 40
    assert script.directives.fail_status is None


def test_stream_pieces_join_back_exactly():
    text = 'Tool results: a returned {"x": 1}\n\nline two  spaced (2 messages in context)'

    assert "".join(text_deltas(text)) == text
    assert text_deltas(text)[:2] == ["Tool results: a", ' returned {"x": 1}']
    assert "".join(json_deltas('{"city":"Paris"}')) == '{"city":"Paris"}'
    assert len(json_deltas('{"city":"Paris"}')) == 4


def test_split_bytes_cuts_into_one_to_three_byte_pieces():
    data = "a🎉你".encode()

    pieces = list(split_bytes(data))

    emoji, han = "🎉".encode(), "你".encode()
    assert pieces == [b"a", emoji[:2], emoji[2:] + han[:1], han[1:2], han[2:]]
    assert b"".join(pieces) == data


def test_cutting_a_run_without_spaces_keeps_characters_whole():
    run = "你好世界和平🎉" * 4

    cuts = [_cut_to_tokens(run, max_tokens) for max_tokens in range(1, 12)]

    assert cuts[:3] == ["你", "你好", "你好"]  # 好 takes two tokens: no half of it is kept
    assert all(run.startswith(cut) and count_text(cut) <= n for n, cut in enumerate(cuts, 1))
    assert cuts[9] == "你好世界和平🎉"


# --- Anthropic Messages ---------------------------------------------------------------------


async def test_anthropic_message_quotes_the_newest_user_message(http):
    status, message = await anthropic(
        http, {"model": "claude-sandbox", "max_tokens": 200, "messages": THREE_MESSAGES}
    )

    assert status == 200
    assert re.fullmatch(r"msg_sbx_[0-9a-f]{24}", message.pop("id"))
    assert message == {
        "type": "message",
        "role": "assistant",
        "model": "claude-sandbox",
        "content": [{"type": "text", "text": THREE_MESSAGES_ANSWER}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": sum(count_text(m["content"]) for m in THREE_MESSAGES),
            "output_tokens": count_text(THREE_MESSAGES_ANSWER),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


async def test_anthropic_stream_has_the_exact_event_sequence_and_the_same_text(http):
    body = {
        "model": "claude-sandbox",
        "max_tokens": 200,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": THREE_MESSAGES,
    }
    _, message = await anthropic(http, body)

    events = anthropic_events(await stream_bytes(http, "/v1/messages", {**body, "stream": True}))

    deltas = len(text_deltas(THREE_MESSAGES_ANSWER))
    assert [kind for kind, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert deltas > 1
    assert streamed_text(events) == message["content"][0]["text"] == THREE_MESSAGES_ANSWER

    input_tokens = count_text("Be brief.") + sum(count_text(m["content"]) for m in THREE_MESSAGES)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"] == {
        "input_tokens": input_tokens,
        "output_tokens": 1,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {**message["usage"], "input_tokens": input_tokens},
    }


async def test_anthropic_call_expressions_become_parallel_tool_uses(http):
    text = (
        'Plan: call:get_weather({"city": "Paris"}) then call:get_time({"tz": "Europe/Paris"}) '
        'and call:launch_rocket({"now": true})'
    )
    body = {
        "model": "claude-sandbox",
        "max_tokens": 300,
        "tools": [WEATHER_TOOL, TIME_TOOL],
        "messages": [{"role": "user", "content": text}],
    }

    status, message = await anthropic(http, body)
    _, retried = await anthropic(http, body)

    assert status == 200
    assert message["stop_reason"] == "tool_use"
    text_block, weather, clock = message["content"]
    assert text_block == {"type": "text", "text": "Calling tools: get_weather, get_time."}
    assert (weather["type"], weather["name"], weather["input"]) == (
        "tool_use",
        "get_weather",
        {"city": "Paris"},
    )
    assert (clock["name"], clock["input"]) == ("get_time", {"tz": "Europe/Paris"})
    assert re.fullmatch(r"toolu_sbx_[0-9a-f]{20}", weather["id"]) and weather["id"] != clock["id"]
    assert [block.get("id") for block in retried["content"]] == [None, weather["id"], clock["id"]]

    assert message["usage"]["input_tokens"] == count_text(text) + count_text(
        orjson.dumps([WEATHER_TOOL, TIME_TOOL]).decode()
    )
    assert message["usage"]["output_tokens"] == (
        count_text("Calling tools: get_weather, get_time.")
        + count_text('get_weather{"city":"Paris"}')
        + count_text('get_time{"tz":"Europe/Paris"}')
    )


async def test_anthropic_streamed_tool_use_sends_input_as_json_fragments(http):
    tool_input = {"city": "São Paulo", "days": [1, 2, 3], "units": {"temp": "celsius"}}
    body = {
        "model": "claude-sandbox",
        "max_tokens": 300,
        "stream": True,
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": f"call:get_weather({orjson.dumps(tool_input).decode()})"}
        ],
    }

    events = anthropic_events(await stream_bytes(http, "/v1/messages", body))

    starts = [data for kind, data in events if kind == "content_block_start"]
    assert starts[1]["index"] == 1
    assert starts[1]["content_block"]["type"] == "tool_use"
    assert starts[1]["content_block"]["name"] == "get_weather"
    assert starts[1]["content_block"]["input"] == {}
    fragments = [
        data["delta"]["partial_json"]
        for kind, data in events
        if kind == "content_block_delta" and data["index"] == 1
    ]
    assert len(fragments) >= 3
    assert orjson.loads("".join(fragments)) == tool_input
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_anthropic_tool_results_are_quoted_in_order(http):
    body = {
        "model": "claude-sandbox",
        "max_tokens": 300,
        "tools": [WEATHER_TOOL, TIME_TOOL],
        "messages": [
            {"role": "user", "content": "weather and time please"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Calling tools: get_weather, get_time."},
                    {"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {}},
                    {"type": "tool_use", "id": "tu_2", "name": "get_time", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "tu_1",
                        "content": [{"type": "text", "text": '{"temp_c": 21}'}],
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "tu_2",
                        "content": "webhook timed out",
                        "is_error": True,
                    },
                ],
            },
        ],
    }

    status, message = await anthropic(http, body)

    assert status == 200
    assert message["stop_reason"] == "end_turn"
    assert message["content"] == [
        {
            "type": "text",
            "text": 'Tool results: get_weather returned {"temp_c": 21}; '
            "get_time failed with webhook timed out (3 messages in context)",
        }
    ]


# --- OpenAI Chat Completions ----------------------------------------------------------------


async def test_openai_completion_has_the_exact_shape(http):
    messages = [{"role": "system", "content": "Be brief."}, *THREE_MESSAGES]

    status, completion = await openai(
        http, {"model": "gpt-sandbox", "max_completion_tokens": 200, "messages": messages}
    )

    assert status == 200
    assert re.fullmatch(r"chatcmpl-sbx[0-9a-f]{24}", completion.pop("id"))
    assert abs(completion.pop("created") - time.time()) < 5
    input_tokens = sum(count_text(m["content"]) for m in messages)
    output_tokens = count_text(THREE_MESSAGES_ANSWER)
    assert completion == {
        "object": "chat.completion",
        "model": "gpt-sandbox",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": THREE_MESSAGES_ANSWER,
                    "refusal": None,
                },
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }


async def test_openai_stream_sends_chunks_usage_and_done(http):
    body = {"model": "gpt-sandbox", "max_tokens": 200, "messages": THREE_MESSAGES}
    _, completion = await openai(http, body)

    raw = await stream_bytes(
        http,
        "/v1/chat/completions",
        {**body, "stream": True, "stream_options": {"include_usage": True}},
    )
    chunks = openai_chunks(raw)

    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        (chunks[0]["id"], chunks[0]["created"], "gpt-sandbox", "chat.completion.chunk")
    }
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert len(content) > 1
    assert "".join(content) == completion["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == completion["usage"]

    without_usage = openai_chunks(
        await stream_bytes(http, "/v1/chat/completions", {**body, "stream": True})
    )
    assert without_usage[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in chunk for chunk in without_usage)


async def test_openai_tool_calls_stream_the_way_openai_does(http):
    body = {
        "model": "gpt-sandbox",
        "max_completion_tokens": 300,
        "tools": [openai_tool(WEATHER_TOOL), openai_tool(TIME_TOOL)],
        "messages": [
            {
                "role": "user",
                "content": 'call:get_weather({"city": "Paris"}) call:get_time({"tz": "UTC"}) '
                'call:launch_rocket({"now": true})',
            }
        ],
    }
    _, completion = await openai(http, body)

    chunks = openai_chunks(
        await stream_bytes(http, "/v1/chat/completions", {**body, "stream": True})
    )

    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Calling tools: get_weather, get_time."
    calls = choice["message"]["tool_calls"]
    assert [(c["type"], c["function"]["name"]) for c in calls] == [
        ("function", "get_weather"),
        ("function", "get_time"),
    ]
    assert [orjson.loads(c["function"]["arguments"]) for c in calls] == [
        {"city": "Paris"},
        {"tz": "UTC"},
    ]
    assert all(re.fullmatch(r"call_sbx_[0-9a-f]{20}", c["id"]) for c in calls)

    deltas = [
        call for chunk in chunks for call in chunk["choices"][0]["delta"].get("tool_calls", [])
    ]
    firsts = [delta for delta in deltas if "id" in delta]
    assert firsts == [
        {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        for index, call in enumerate(calls)
    ]
    for index, call in enumerate(calls):
        fragments = [d for d in deltas if d["index"] == index and "id" not in d]
        assert len(fragments) >= 3
        assert all(
            set(d) == {"index", "function"} and set(d["function"]) == {"arguments"}
            for d in fragments
        )
        assert (
            "".join(d["function"]["arguments"] for d in fragments) == call["function"]["arguments"]
        )
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_both_wires_answer_the_same_tool_round_alike(http):
    tool_input = {"city": "Paris"}
    anthropic_body = {
        "model": "m",
        "max_tokens": 300,
        "system": "Be brief.",
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "weather please"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Calling tools: get_weather."},
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": tool_input},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "21 C"}],
            },
        ],
    }
    openai_body = {
        "model": "m",
        "max_tokens": 300,
        "tools": [openai_tool(WEATHER_TOOL)],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "weather please"},
            {
                "role": "assistant",
                "content": "Calling tools: get_weather.",
                "tool_calls": [
                    {
                        "id": "t1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "21 C"},
        ],
    }

    _, message = await anthropic(http, anthropic_body)
    _, completion = await openai(http, openai_body)

    expected = "Tool results: get_weather returned 21 C (3 messages in context)"
    assert message["content"] == [{"type": "text", "text": expected}]
    assert completion["choices"][0]["message"]["content"] == expected
    assert message["usage"]["input_tokens"] == completion["usage"]["prompt_tokens"]
    assert message["usage"]["output_tokens"] == completion["usage"]["completion_tokens"]


async def test_openai_trailing_tool_messages_are_quoted(http):
    status, completion = await openai(
        http,
        {
            "model": "m",
            "max_tokens": 300,
            "messages": [
                {"role": "user", "content": 'call:get_weather({"city": "Oslo"}) and the time'},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "{}"},
                        },
                        {
                            "id": "c2",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": "{}"},
                        },
                    ],
                },
                {
                    "role": "tool",
                    "tool_call_id": "c1",
                    "content": [{"type": "text", "text": "-3 C"}],
                },
                {"role": "tool", "tool_call_id": "c2", "content": "09:15"},
            ],
        },
    )

    assert status == 200
    assert completion["choices"][0]["message"]["content"] == (
        "Tool results: get_weather returned -3 C; get_time returned 09:15 (4 messages in context)"
    )
    assert "tool_calls" not in completion["choices"][0]["message"]


# --- answer length --------------------------------------------------------------------------


async def test_tokens_directive_pads_the_answer_to_exactly_n_tokens(http):
    sentence = 'Sandbox reply to "make it long" (1 messages in context)'

    _, long = await anthropic(
        http,
        {
            "model": "m",
            "max_tokens": 500,
            "messages": [{"role": "user", "content": "make it long sandbox:tokens=120"}],
        },
    )
    _, short = await anthropic(
        http,
        {
            "model": "m",
            "max_tokens": 500,
            "messages": [{"role": "user", "content": "make it long sandbox:tokens=3"}],
        },
    )

    text = long["content"][0]["text"]
    assert long["usage"]["output_tokens"] == 120 == count_text(text)
    assert long["stop_reason"] == "end_turn"
    assert text.startswith(sentence + " " + " ".join(FILLER_WORDS[:3]))
    assert short["content"][0]["text"] == sentence


async def test_max_tokens_cuts_text_at_a_word_boundary(http):
    messages = [{"role": "user", "content": "make it long sandbox:tokens=200"}]
    _, whole = await anthropic(http, {"model": "m", "max_tokens": 1000, "messages": messages})

    _, cut = await anthropic(http, {"model": "m", "max_tokens": 50, "messages": messages})
    _, tiny = await anthropic(http, {"model": "m", "max_tokens": 7, "messages": messages})
    _, completion = await openai(http, {"model": "m", "max_tokens": 50, "messages": messages})

    whole_text = whole["content"][0]["text"]
    assert cut["stop_reason"] == "max_tokens"
    assert cut["usage"]["output_tokens"] == 50 == count_text(cut["content"][0]["text"])
    assert whole_text.startswith(cut["content"][0]["text"] + " ")
    assert tiny["content"][0]["text"] == 'Sandbox reply to "make it'
    assert tiny["usage"]["output_tokens"] == 7
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["choices"][0]["message"]["content"] == cut["content"][0]["text"]


async def test_max_tokens_cuts_between_cjk_and_emoji_words_whole(http):
    messages = [{"role": "user", "content": "東京 🍣 大阪 🎉 " * 3}]
    _, whole = await anthropic(http, {"model": "m", "max_tokens": 1000, "messages": messages})

    texts = []
    for max_tokens in range(8, 30):
        _, cut = await anthropic(
            http, {"model": "m", "max_tokens": max_tokens, "messages": messages}
        )
        assert cut["stop_reason"] == "max_tokens"
        assert cut["usage"]["output_tokens"] <= max_tokens
        texts.append(cut["content"][0]["text"])

    whole_text = whole["content"][0]["text"]
    assert all(whole_text.startswith(text + " ") for text in texts)
    assert {text.rsplit(" ", 1)[1] for text in texts} >= {'"東京', "🍣", "大阪", "🎉"}


# --- directives: failures, latency, byte-level streaming ------------------------------------


async def test_fail_directive_fails_every_attempt_with_the_provider_error_body(http):
    body = {
        "model": "m",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "sandbox:fail=500"}],
    }

    first = await anthropic(http, body)
    second = await anthropic(http, body)
    status, error = await openai(http, body)

    expected_message = "sandbox:fail=500 asked for this failure"
    assert (
        first
        == second
        == (
            500,
            {"type": "error", "error": {"type": "api_error", "message": expected_message}},
        )
    )
    assert (status, error) == (
        500,
        {
            "error": {
                "message": expected_message,
                "type": "server_error",
                "param": None,
                "code": None,
            }
        },
    )


async def test_fail_directive_with_a_count_lets_the_retry_succeed(http):
    body = {
        "model": "m",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "retry me sandbox:fail=429x1"}],
    }

    async with http.post("/v1/messages", json=body) as response:
        assert response.status == 429
        assert response.headers["retry-after"] == "0"
        assert (await response.json())["error"]["type"] == "rate_limit_error"
    status, message = await anthropic(http, body)

    assert status == 200
    assert message["content"][0]["text"] == 'Sandbox reply to "retry me" (1 messages in context)'


async def test_overloaded_failure_says_retry_at_once(http):
    body = {
        "model": "m",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "sandbox:fail=529"}],
    }

    async with http.post("/v1/messages", json=body) as response:
        assert response.status == 529
        assert response.headers["retry-after"] == "0"
        assert (await response.json())["error"]["type"] == "overloaded_error"


async def test_delay_directive_holds_the_answer(http):
    body = {
        "model": "m",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "sandbox:delay_ms=150"}],
    }

    started_s = time.monotonic()
    status, _ = await anthropic(http, body)
    elapsed_s = time.monotonic() - started_s

    assert status == 200
    assert 0.15 <= elapsed_s < 3.0


async def test_stream_delay_directive_paces_events(http):
    body = {
        "model": "m",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "slow sandbox:stream_delay_ms=20"}],
    }

    started_s = time.monotonic()
    events = anthropic_events(await stream_bytes(http, "/v1/messages", body))
    elapsed_s = time.monotonic() - started_s

    assert 0.02 * (len(events) - 1) <= elapsed_s < 3.0


async def test_split_utf8_cuts_characters_across_writes_and_they_reassemble(http, sandbox):
    text = "天気 🌧️ 東京 🍣 sandbox:split_utf8"
    body = {"model": "m", "max_tokens": 200, "messages": [{"role": "user", "content": text}]}
    _, message = await anthropic(http, body)

    chunks = await raw_chunked_post(sandbox, "/v1/messages", {**body, "stream": True})

    assert {len(chunk) for chunk in chunks} <= {1, 2, 3}
    assert any(not decodes_alone(chunk) for chunk in chunks)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    stream_text = "".join(decoder.decode(chunk) for chunk in chunks) + decoder.decode(b"", True)
    events = anthropic_events(stream_text.encode())
    assert streamed_text(events) == message["content"][0]["text"]
    assert (
        message["content"][0]["text"] == 'Sandbox reply to "天気 🌧️ 東京 🍣" (1 messages in context)'
    )


async def test_stream_cut_drops_the_connection_after_that_many_events(http, sandbox):
    body = {
        "model": "m",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "break sandbox:tokens=30 sandbox:stream_cut=3"}],
    }
    received = b""

    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(f"{sandbox.url}/v1/messages", json=body) as response:
            async for chunk in response.content.iter_any():
                received += chunk

    assert [name for name, _ in anthropic_events(received)] == [
        "message_start",
        "content_block_start",
        "ping",
    ]


def decodes_alone(chunk: bytes) -> bool:
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def raw_chunked_post(sandbox: RunningSandbox, path: str, body: dict[str, Any]) -> list[bytes]:
    """The body's HTTP/1.1 chunks as the server framed them, whatever TCP coalesced."""
    payload = orjson.dumps(body)
    reader, writer = await asyncio.open_connection(sandbox.host, sandbox.port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: sandbox\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()

    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in head
    chunks = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return chunks
        chunks.append(rest[:size])
        assert rest[size : size + 2] == b"\r\n"
        rest = rest[size + 2 :]


# --- stats and refusals ---------------------------------------------------------------------


async def test_stats_count_every_call_and_reset(http):
    async with http.post("/sandbox/stats/reset") as response:
        assert response.status == 200
    ok = {"model": "claude-a", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}

    await anthropic(http, ok)
    await anthropic(http, {"model": "claude-a", "messages": ok["messages"]})
    await anthropic(http, {**ok, "messages": [{"role": "user", "content": "sandbox:fail=503"}]})
    await stream_bytes(http, "/v1/chat/completions", {**ok, "model": "gpt-b", "stream": True})
    async with http.post("/v1/chat/completions", data=b"not json") as response:
        assert response.status == 400
    async with http.get("/sandbox/stats") as response:
        stats = await response.json()
    async with http.post("/sandbox/stats/reset") as response:
        assert response.status == 200
    async with http.get("/sandbox/stats") as response:
        after_reset = await response.json()

    assert stats == {
        "calls": 5,
        "by_api": {"anthropic": 3, "openai": 2},
        "by_model": {"claude-a": 3, "gpt-b": 1},
        "injected_failures": 1,
        "streams": 1,
    }
    assert after_reset == {
        "calls": 0,
        "by_api": {"anthropic": 0, "openai": 0},
        "by_model": {},
        "injected_failures": 0,
        "streams": 0,
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            "max_tokens: Field required",
        ),
        (
            {"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]},
            "max_tokens: must be an integer of at least 1, got 0",
        ),
        (
            {"model": "m", "max_tokens": 10, "messages": "hi"},
            "messages: must be a non-empty list of messages",
        ),
        (
            {"model": "m", "max_tokens": 10, "messages": [{"role": "robot", "content": "hi"}]},
            "messages.0.role: must be user or assistant, got 'robot'",
        ),
        (
            {
                "model": "m",
                "max_tokens": 10,
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t9", "name": "x", "input": {}}],
                    },
                    {"role": "user", "content": "never mind"},
                ],
            },
            "messages.1: `tool_use` ids were found without `tool_result` blocks immediately "
            "after: t9. Each `tool_use` block must have a corresponding `tool_result` block in "
            "the next message.",
        ),
    ],
)
async def test_anthropic_refuses_invalid_requests_with_its_error_body(http, body, message):
    assert await anthropic(http, body) == (
        400,
        {"type": "error", "error": {"type": "invalid_request_error", "message": message}},
    )


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (
            {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            "max_completion_tokens: Field required (or the older max_tokens)",
            "max_completion_tokens",
        ),
        (
            {"model": "m", "max_tokens": 10, "messages": []},
            "messages: must be a non-empty list of messages",
            "messages",
        ),
        (
            {"model": "m", "max_tokens": 10, "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].tool_call_id: Field required",
            "messages[0].tool_call_id",
        ),
    ],
)
async def test_openai_refuses_invalid_requests_with_its_error_body(http, body, message, param):
    assert await openai(http, body) == (
        400,
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": None,
            }
        },
    )


# --- running it alone -----------------------------------------------------------------------


async def test_module_logs_its_url_and_stops_on_sigterm():
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "serve_app.sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(process.stderr.readline(), timeout=30)).decode()
        match = re.fullmatch(r"sandbox listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match and int(match.group(2)) > 0

        async with (
            aiohttp.ClientSession() as session,
            session.get(match.group(1) + "/sandbox/stats") as response,
        ):
            assert (await response.json())["calls"] == 0
    finally:
        process.send_signal(signal.SIGTERM)
        return_code = await asyncio.wait_for(process.wait(), timeout=10)

    assert return_code == 0
    assert await process.stderr.read() == b""
