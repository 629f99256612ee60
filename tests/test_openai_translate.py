"""Canonical <-> OpenAI Chat Completions translation, with hand-written OpenAI payloads."""

import orjson
import pytest

from serve_app.canonical import ModelCall, Usage
from serve_app.errors import InvalidRequest, UpstreamError
from serve_app.providers.assembly import StreamAssembler
from serve_app.providers.openai_translate import (
    OpenAIStreamTranslator,
    answer_from_completion,
    chat_messages,
    chat_request,
    tool_choice,
)

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def user(*blocks):
    return {"role": "user", "content": list(blocks)}


def text(value):
    return {"type": "text", "text": value}


def call_of(**overrides):
    fields = {
        "provider": "openai",
        "upstream_model": "gpt-4.1-mini",
        "messages": [user(text("hi"))],
        "max_tokens": 256,
    }
    fields.update(overrides)
    return ModelCall(**fields)


# Requests.


def test_request_carries_model_max_completion_tokens_and_only_set_options():
    body = chat_request(call_of(), stream=False)

    assert body == {
        "model": "gpt-4.1-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 256,
    }


def test_request_for_compatible_servers_can_use_max_tokens():
    body = chat_request(call_of(temperature=0.2), stream=False, max_tokens_field="max_tokens")

    assert body["max_tokens"] == 256
    assert "max_completion_tokens" not in body
    assert body["temperature"] == 0.2


def test_streamed_request_asks_for_usage():
    body = chat_request(call_of(), stream=True)

    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_system_string_and_text_blocks_become_the_first_message():
    as_string = chat_messages("Be brief.", [user(text("hi"))])
    as_blocks = chat_messages([text("Be brief."), text("Answer in French.")], [user(text("hi"))])

    assert as_string[0] == {"role": "system", "content": "Be brief."}
    assert as_blocks[0] == {"role": "system", "content": "Be brief.\nAnswer in French."}
    assert chat_messages("", [user(text("hi"))]) == [{"role": "user", "content": "hi"}]


def test_user_text_blocks_join_into_one_string():
    messages = chat_messages(None, [user(text("first"), text("second"))])

    assert messages == [{"role": "user", "content": "first\nsecond"}]


def test_user_images_become_parts_with_data_or_plain_urls():
    message = user(
        text("What is in these?"),
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    )

    assert chat_messages(None, [message]) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


def test_assistant_text_and_tool_use_become_tool_calls_with_compact_arguments():
    assistant = {
        "role": "assistant",
        "content": [
            text("Let me check."),
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris", "units": {"temp": "C"}},
            },
        ],
    }

    assert chat_messages(None, [assistant]) == [
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city":"Paris","units":{"temp":"C"}}',
                    },
                }
            ],
        }
    ]


def test_assistant_with_only_tool_calls_has_null_content():
    assistant = {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "ping", "input": {}}],
    }

    message = chat_messages(None, [assistant])[0]

    assert message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == "{}"


def test_tool_results_come_first_as_tool_messages_then_the_rest_of_the_turn():
    turn = user(
        text("Here you go."),
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C, cloudy"},
        {
            "type": "tool_result",
            "tool_use_id": "toolu_2",
            "content": [text("line one"), text("line two")],
        },
    )

    assert chat_messages(None, [turn]) == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C, cloudy"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "line one\nline two"},
        {"role": "user", "content": "Here you go."},
    ]


def test_tool_result_only_turn_has_no_user_message():
    turn = user({"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"})

    assert chat_messages(None, [turn]) == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "ok"}
    ]


def test_tool_result_json_content_is_serialized_and_errors_are_prefixed():
    turn = user(
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": {"temp_c": 18}},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "timeout", "is_error": True},
    )

    tool_messages = chat_messages(None, [turn])

    assert tool_messages[0]["content"] == '{"temp_c":18}'
    assert tool_messages[1]["content"] == "Error: timeout"


def test_unsupported_user_block_is_a_client_error():
    with pytest.raises(InvalidRequest, match="'document'"):
        chat_messages(None, [user({"type": "document", "source": {}})])


def test_tools_become_functions_with_their_schema_as_parameters():
    body = chat_request(call_of(tools=[WEATHER_TOOL], tool_choice={"type": "auto"}), stream=False)

    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ]
    assert body["tool_choice"] == "auto"


@pytest.mark.parametrize(
    ("anthropic_choice", "openai_choice"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_tool_choice_mapping(anthropic_choice, openai_choice):
    assert tool_choice(anthropic_choice) == openai_choice


def test_disabling_parallel_tool_use_sets_parallel_tool_calls_false():
    choice = {"type": "auto", "disable_parallel_tool_use": True}

    body = chat_request(call_of(tools=[WEATHER_TOOL], tool_choice=choice), stream=False)

    assert body["parallel_tool_calls"] is False


def test_tool_choice_without_tools_is_dropped():
    body = chat_request(call_of(tool_choice={"type": "auto"}), stream=False)

    assert "tool_choice" not in body


def test_unknown_tool_choice_is_a_client_error():
    with pytest.raises(InvalidRequest, match="'sometimes'"):
        tool_choice({"type": "sometimes"})


# Non-streamed answers.


def completion(message, finish_reason="stop", usage=None):
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "model": "gpt-4.1-mini-2025-04-14",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage
        or {
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "total_tokens": 150,
            "prompt_tokens_details": {"cached_tokens": 100},
        },
    }


def test_text_answer_with_cached_tokens_counted_apart():
    answer = answer_from_completion(
        completion({"role": "assistant", "content": "Bonjour."}), upstream="openai"
    )

    assert answer.upstream_id == "chatcmpl-abc"
    assert answer.content == [{"type": "text", "text": "Bonjour."}]
    assert answer.stop_reason == "end_turn"
    assert answer.usage == Usage(input_tokens=20, output_tokens=30, cache_read_input_tokens=100)
    assert answer.upstream == "openai"


def test_tool_calls_become_tool_use_blocks_with_parsed_input():
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_time", "arguments": ""},
            },
        ],
    }

    answer = answer_from_completion(completion(message, "tool_calls"), upstream="sandbox")

    assert answer.content == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
    ]
    assert answer.stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ],
)
def test_finish_reasons_map_to_stop_reasons(finish_reason, stop_reason):
    message = {"role": "assistant", "content": "x"}

    answer = answer_from_completion(completion(message, finish_reason), upstream="openai")

    assert answer.stop_reason == stop_reason


def test_tool_calls_finished_with_stop_still_stop_for_tool_use():
    message = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "ping", "arguments": "{}"}}
        ],
    }

    answer = answer_from_completion(completion(message, "stop"), upstream="openai_compatible")

    assert answer.stop_reason == "tool_use"
    assert [block["type"] for block in answer.content] == ["tool_use"]


def test_unparseable_tool_arguments_are_an_upstream_error():
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "ping", "arguments": '{"a":'}}
        ],
    }

    with pytest.raises(UpstreamError, match="not JSON"):
        answer_from_completion(completion(message, "tool_calls"), upstream="openai")


def test_answer_without_choices_is_an_upstream_error():
    with pytest.raises(UpstreamError, match="no choices"):
        answer_from_completion({"id": "x", "choices": []}, upstream="openai")


def test_refusal_is_shown_as_text():
    message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}

    answer = answer_from_completion(completion(message), upstream="openai")

    assert answer.content == [{"type": "text", "text": "I can't help with that."}]


# Streams.


def chunk(delta=None, finish_reason=None, usage=None, choices=True):
    body = {
        "id": "chatcmpl-s1",
        "object": "chat.completion.chunk",
        "model": "gpt-4.1-mini-2025-04-14",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}]
        if choices
        else [],
        "usage": usage,
    }
    return body


USAGE_CHUNK = chunk(
    choices=False,
    usage={
        "prompt_tokens": 50,
        "completion_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 8},
    },
)
FINAL_USAGE = {
    "input_tokens": 42,
    "output_tokens": 12,
    "cache_read_input_tokens": 8,
    "cache_creation_input_tokens": 0,
}


def translate(chunks, *, done=True):
    translator = OpenAIStreamTranslator(model="gpt-4.1-mini")
    events = []
    for item in chunks:
        events.extend(translator.feed(item))
    if done:
        events.extend(translator.finish())
    return events


def test_text_stream_becomes_anthropic_events_with_usage_in_message_delta():
    events = translate(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo."}),
            chunk(finish_reason="stop"),
            USAGE_CHUNK,
        ]
    )

    assert events == [
        {
            "type": "message_start",
            "message": {
                "id": "chatcmpl-s1",
                "type": "message",
                "role": "assistant",
                "model": "gpt-4.1-mini-2025-04-14",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo."}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": FINAL_USAGE,
        },
        {"type": "message_stop"},
    ]


def test_stop_reason_waits_for_the_usage_chunk():
    translator = OpenAIStreamTranslator(model="gpt-4.1-mini")
    translator.feed(chunk({"content": "Hi"}))

    after_finish = translator.feed(chunk(finish_reason="length"))
    after_usage = translator.feed(USAGE_CHUNK)

    assert [event["type"] for event in after_finish] == []
    assert [event["type"] for event in after_usage] == [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert after_usage[1]["delta"]["stop_reason"] == "max_tokens"
    assert translator.finished
    assert translator.finish() == []


def test_done_without_usage_still_closes_the_message_with_zero_usage():
    events = translate([chunk({"content": "Hi"}), chunk(finish_reason="stop")])

    assert events[-2]["usage"] == Usage().as_dict()
    assert events[-1] == {"type": "message_stop"}


def test_usage_in_the_finish_chunk_ends_the_message_at_once():
    translator = OpenAIStreamTranslator(model="m")
    translator.feed(chunk({"content": "Hi"}))

    events = translator.feed(chunk(finish_reason="stop", usage={"prompt_tokens": 3}))

    assert [event["type"] for event in events] == [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[1]["usage"]["input_tokens"] == 3


def tool_delta(index, *, call_id=None, name=None, arguments=None):
    function = {}
    if name is not None:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = arguments
    entry = {"index": index, "function": function}
    if call_id is not None:
        entry.update(id=call_id, type="function")
    return {"tool_calls": [entry]}


def test_split_tool_arguments_stream_as_input_json_deltas():
    events = translate(
        [
            chunk({"role": "assistant", "content": None}),
            chunk(tool_delta(0, call_id="call_w", name="get_weather", arguments="")),
            chunk(tool_delta(0, arguments='{"ci')),
            chunk(tool_delta(0, arguments='ty": "Par')),
            chunk(tool_delta(0, arguments='is"}')),
            chunk(finish_reason="tool_calls"),
            USAGE_CHUNK,
        ]
    )

    assert events[1:] == [
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {
                "type": "tool_use",
                "id": "call_w",
                "name": "get_weather",
                "input": {},
            },
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": '{"ci'},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": 'ty": "Par'},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": 'is"}'},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": FINAL_USAGE,
        },
        {"type": "message_stop"},
    ]


def test_text_then_parallel_tool_calls_get_consecutive_block_indexes():
    events = translate(
        [
            chunk({"role": "assistant", "content": "Checking both."}),
            chunk(tool_delta(0, call_id="call_a", name="get_weather", arguments='{"city":')),
            chunk(tool_delta(0, arguments='"Paris"}')),
            chunk(tool_delta(1, call_id="call_b", name="get_weather", arguments='{"city":"Oslo"}')),
            chunk(finish_reason="tool_calls"),
            USAGE_CHUNK,
        ]
    )

    shape = [
        (event["type"], event.get("index"), event.get("content_block", {}).get("id"))
        for event in events
        if event["type"].startswith("content_block_") and event["type"] != "content_block_delta"
    ]
    assert shape == [
        ("content_block_start", 0, None),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "call_a"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, "call_b"),
        ("content_block_stop", 2, None),
    ]

    assembler = StreamAssembler()
    for event in events:
        assembler.feed(event)
    assert assembler.content() == [
        {"type": "text", "text": "Checking both."},
        {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {"city": "Oslo"}},
    ]
    assert assembler.stop_reason == "tool_use"
    assert assembler.usage == Usage(input_tokens=42, output_tokens=12, cache_read_input_tokens=8)


def test_streamed_and_whole_answers_assemble_to_the_same_content():
    arguments = orjson.dumps({"city": "Zürich", "days": [1, 2]}).decode()
    whole = completion(
        {
            "role": "assistant",
            "content": "Sure.",
            "tool_calls": [
                {
                    "id": "call_z",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        "tool_calls",
        usage={"prompt_tokens": 50, "completion_tokens": 12},
    )
    pieces = [arguments[i : i + 5] for i in range(0, len(arguments), 5)]
    stream = [
        chunk({"role": "assistant", "content": "Su"}),
        chunk({"content": "re."}),
        chunk(tool_delta(0, call_id="call_z", name="get_weather")),
        *[chunk(tool_delta(0, arguments=piece)) for piece in pieces],
        chunk(finish_reason="tool_calls"),
        chunk(choices=False, usage={"prompt_tokens": 50, "completion_tokens": 12}),
    ]

    assembler = StreamAssembler()
    for event in translate(stream):
        assembler.feed(event)

    expected = answer_from_completion(whole, upstream="openai")
    streamed = assembler.answer(upstream="openai")
    assert streamed.content == expected.content
    assert streamed.stop_reason == expected.stop_reason
    assert streamed.usage == expected.usage


def test_tool_call_without_arguments_assembles_to_empty_input():
    events = translate(
        [
            chunk(tool_delta(0, call_id="call_p", name="ping")),
            chunk(finish_reason="tool_calls"),
        ]
    )

    assembler = StreamAssembler()
    for event in events:
        assembler.feed(event)
    assert assembler.content() == [
        {"type": "tool_use", "id": "call_p", "name": "ping", "input": {}}
    ]


def test_stream_cut_before_finish_reason_is_an_upstream_error():
    translator = OpenAIStreamTranslator(model="m")
    translator.feed(chunk({"content": "Hel"}))

    with pytest.raises(UpstreamError, match="before its finish_reason"):
        translator.finish()


def test_error_chunk_becomes_an_error_event_and_ends_the_stream():
    translator = OpenAIStreamTranslator(model="m")
    translator.feed(chunk({"content": "Hel"}))

    events = translator.feed({"error": {"message": "server overloaded", "type": "server_error"}})

    assert events == [
        {
            "type": "error",
            "error": {
                "type": "api_error",
                "message": "the openai stream failed: server overloaded",
            },
        }
    ]
    assert translator.finished and translator.failed
    assert translator.finish() == []


def test_interleaved_tool_arguments_are_an_upstream_error():
    translator = OpenAIStreamTranslator(model="m")
    translator.feed(chunk(tool_delta(0, call_id="a", name="one", arguments="{")))
    translator.feed(chunk(tool_delta(1, call_id="b", name="two", arguments="{")))

    with pytest.raises(UpstreamError, match="interleaved"):
        translator.feed(chunk(tool_delta(0, arguments="}")))


def test_tool_call_without_id_gets_one():
    events = translate([chunk(tool_delta(0, name="ping")), chunk(finish_reason="tool_calls")])

    block = events[1]["content_block"]
    assert block["id"].startswith("call_")
    assert len(block["id"]) > len("call_")
