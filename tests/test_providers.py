"""ModelRouter and the provider adapters against the real sandbox upstream on loopback."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import aiohttp
import orjson
import pytest

from serve_app.canonical import ModelAnswer, ModelCall, StreamEvent, Usage
from serve_app.errors import (
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamRejected,
)
from serve_app.providers import RetryPolicy, StreamAssembler
from serve_app.providers.anthropic import messages_request
from serve_app.providers.openai_translate import chat_request
from serve_app.router import ModelRouter
from serve_app.sandbox import RunningSandbox, start_sandbox
from serve_app.settings import Settings

PROVIDERS = ("anthropic", "openai", "openai_compatible")
MAX_ATTEMPTS = 3

# Real backoff would make the failure tests wait seconds for nothing.
FAST_RETRIES = RetryPolicy(
    max_attempts=MAX_ATTEMPTS,
    backoff_multiplier_s=0.001,
    backoff_max_s=0.005,
    retry_after_max_s=0.01,
)

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


def settings_for(**fields: Any) -> Settings:
    """Settings from these fields only: no provider key from the environment or `.env`."""
    defaults: dict[str, Any] = {
        "anthropic_api_key": None,
        "openai_api_key": None,
        "openai_compatible_api_key": None,
        "openai_compatible_base_url": None,
        "sandbox_url": None,
        "upstream_max_attempts": MAX_ATTEMPTS,
    }
    return Settings(_env_file=None, **{**defaults, **fields})


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[RunningSandbox]:
    running = await start_sandbox("127.0.0.1", 0)
    yield running
    await running.aclose()


@pytest.fixture(scope="module")
async def router(sandbox: RunningSandbox) -> AsyncIterator[ModelRouter]:
    model_router = ModelRouter(settings_for(sandbox_url=sandbox.url), retry_policy=FAST_RETRIES)
    yield model_router
    await model_router.aclose()


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(autouse=True)
async def fresh_stats(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{sandbox.url}/sandbox/stats/reset") as response:
        assert response.status == 200


async def sandbox_stats(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.get(f"{sandbox.url}/sandbox/stats") as response:
        return await response.json()


def call_to(provider: str, text: str, **fields: Any) -> ModelCall:
    return ModelCall(
        provider=provider,
        upstream_model=fields.pop("upstream_model", "sandbox-model"),
        messages=fields.pop(
            "messages", [{"role": "user", "content": [{"type": "text", "text": text}]}]
        ),
        max_tokens=fields.pop("max_tokens", 200),
        request_id="req_test",
        **fields,
    )


async def collect(router: ModelRouter, call: ModelCall) -> list[StreamEvent]:
    return [event async for event in router.stream(call)]


def assembled(events: list[StreamEvent]) -> ModelAnswer:
    assembler = StreamAssembler()
    for event in events:
        assembler.feed(event)
    return assembler.answer(upstream="sandbox")


def answer_text(answer: ModelAnswer) -> str:
    return "".join(block["text"] for block in answer.content if block["type"] == "text")


# Resolution.


def test_providers_without_keys_go_to_the_sandbox_and_say_so(sandbox, caplog):
    caplog.set_level(logging.INFO, logger="serve_app.router")

    model_router = ModelRouter(settings_for(sandbox_url=sandbox.url))

    assert [model_router.upstream_label(name) for name in PROVIDERS] == ["sandbox"] * 3
    sandboxed = [
        record.getMessage() for record in caplog.records if "sandbox at" in record.getMessage()
    ]
    assert sandboxed == [
        f"provider {name} is not configured: the sandbox at {sandbox.url} serves it"
        for name in PROVIDERS
    ]


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        ("anthropic", "provider anthropic has no API key configured: set ANTHROPIC_API_KEY"),
        ("openai", "provider openai has no API key configured: set OPENAI_API_KEY"),
        (
            "openai_compatible",
            "provider openai_compatible has no base URL configured: set OPENAI_COMPATIBLE_BASE_URL",
        ),
    ],
)
async def test_unconfigured_provider_names_the_setting_to_fill_in(provider, message):
    model_router = ModelRouter(settings_for())

    with pytest.raises(UpstreamError) as complete_failure:
        await model_router.complete(call_to(provider, "hello"))
    with pytest.raises(UpstreamError) as stream_failure:
        await collect(model_router, call_to(provider, "hello"))

    assert complete_failure.value.message == message
    assert stream_failure.value.message == message
    await model_router.aclose()


async def test_openai_compatible_base_url_is_used_with_its_own_label(sandbox, http):
    model_router = ModelRouter(
        settings_for(openai_compatible_base_url=f"{sandbox.url}/v1"), retry_policy=FAST_RETRIES
    )

    answer = await model_router.complete(call_to("openai_compatible", "hello compatible"))

    assert model_router.upstream_label("openai_compatible") == "openai_compatible"
    assert answer.upstream == "openai_compatible"
    assert answer_text(answer) == 'Sandbox reply to "hello compatible" (1 messages in context)'
    assert (await sandbox_stats(sandbox, http))["by_api"]["openai"] == 1
    await model_router.aclose()


# Answers.


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_complete_and_stream_give_the_same_answer(router, sandbox, http, provider):
    call = call_to(provider, "Hello there, how are you?")

    answer = await router.complete(call)
    events = await collect(router, call)

    expected_text = 'Sandbox reply to "Hello there, how are you?" (1 messages in context)'
    assert answer_text(answer) == expected_text
    assert answer.stop_reason == "end_turn"
    assert answer.upstream == "sandbox"
    assert events[0]["type"] == "message_start"
    assert events[-1] == {"type": "message_stop"}
    streamed = assembled(events)
    assert answer_text(streamed) == expected_text
    assert streamed.stop_reason == "end_turn"
    assert streamed.usage == answer.usage
    stats = await sandbox_stats(sandbox, http)
    assert (stats["calls"], stats["streams"]) == (2, 1)


async def raw_sandbox_usage(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, call: ModelCall
) -> dict[str, Any]:
    """The usage the sandbox reports for the same body the adapter sends, read without it."""
    if call.provider == "anthropic":
        url, body = f"{sandbox.url}/v1/messages", messages_request(call, stream=False)
    else:
        url, body = f"{sandbox.url}/v1/chat/completions", chat_request(call, stream=False)
    async with http.post(url, data=orjson.dumps(body)) as response:
        assert response.status == 200
        return (await response.json())["usage"]


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_usage_is_what_the_sandbox_reported(router, sandbox, http, provider):
    call = call_to(provider, "Count these words sandbox:tokens=40", system="Be brief.")

    answer = await router.complete(call)
    streamed = assembled(await collect(router, call))
    reported = await raw_sandbox_usage(sandbox, http, call)

    if provider == "anthropic":
        expected = Usage(
            input_tokens=reported["input_tokens"], output_tokens=reported["output_tokens"]
        )
    else:
        expected = Usage(
            input_tokens=reported["prompt_tokens"], output_tokens=reported["completion_tokens"]
        )
    assert expected.output_tokens == 40
    assert expected.input_tokens > 0
    assert answer.usage == expected
    assert streamed.usage == expected


# Tools.


def tool_call(provider: str) -> ModelCall:
    text = 'Check both. call:get_weather({"city": "Zürich", "days": [1, 2, 3]}) call:get_time({})'
    return call_to(provider, text, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice={"type": "auto"})


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_parallel_tool_calls_stream_and_complete_alike(router, provider):
    call = tool_call(provider)

    answer = await router.complete(call)
    events = await collect(router, call)

    tool_uses = [block for block in answer.content if block["type"] == "tool_use"]
    assert [(use["name"], use["input"]) for use in tool_uses] == [
        ("get_weather", {"city": "Zürich", "days": [1, 2, 3]}),
        ("get_time", {}),
    ]
    assert answer.stop_reason == "tool_use"

    weather_index = next(
        event["index"]
        for event in events
        if event["type"] == "content_block_start"
        and event["content_block"].get("name") == "get_weather"
    )
    fragments = [
        event["delta"]["partial_json"]
        for event in events
        if event["type"] == "content_block_delta"
        and event["index"] == weather_index
        and event["delta"]["type"] == "input_json_delta"
    ]
    assert len(fragments) > 1
    assert orjson.loads("".join(fragments)) == {"city": "Zürich", "days": [1, 2, 3]}

    streamed = assembled(events)
    assert streamed.content == answer.content
    assert streamed.stop_reason == "tool_use"
    block_starts = [event["index"] for event in events if event["type"] == "content_block_start"]
    assert block_starts == list(range(len(answer.content)))


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_tool_results_go_back_and_are_quoted(router, provider):
    first = await router.complete(tool_call(provider))
    tool_uses = [block for block in first.content if block["type"] == "tool_use"]
    results = [
        {"type": "tool_result", "tool_use_id": tool_uses[0]["id"], "content": "18 C and sunny"},
        {
            "type": "tool_result",
            "tool_use_id": tool_uses[1]["id"],
            "content": [{"type": "text", "text": "clock offline"}],
            "is_error": True,
        },
    ]
    history = [*tool_call(provider).messages, {"role": "assistant", "content": first.content}]
    follow_up = tool_call(provider)
    follow_up.messages = [*history, {"role": "user", "content": results}]

    answer = await router.complete(follow_up)
    streamed = assembled(await collect(router, follow_up))

    text = answer_text(answer)
    assert text.startswith("Tool results: get_weather returned 18 C and sunny; get_time ")
    assert "clock offline" in text
    assert answer.stop_reason == "end_turn"
    assert answer_text(streamed) == text


# Failures and retries.


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_rate_limited_first_attempt_is_retried(router, sandbox, http, provider):
    call = call_to(provider, "hello sandbox:fail=429x1", upstream_model=f"retry-{provider}")

    answer = await router.complete(call)

    assert answer_text(answer) == 'Sandbox reply to "hello" (1 messages in context)'
    stats = await sandbox_stats(sandbox, http)
    assert stats["by_model"] == {f"retry-{provider}": 2}
    assert stats["injected_failures"] == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_rate_limited_stream_is_retried_before_its_first_event(
    router, sandbox, http, provider
):
    call = call_to(provider, "streamed sandbox:fail=503x2")

    events = await collect(router, call)

    assert answer_text(assembled(events)) == 'Sandbox reply to "streamed" (1 messages in context)'
    stats = await sandbox_stats(sandbox, http)
    assert (stats["calls"], stats["injected_failures"], stats["streams"]) == (3, 2, 1)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_server_error_fails_after_every_attempt(router, sandbox, http, provider):
    call = call_to(provider, "hello sandbox:fail=500")

    with pytest.raises(UpstreamError) as failure:
        await router.complete(call)

    assert type(failure.value) is UpstreamError
    assert failure.value.status == 502
    assert failure.value.upstream_status == 500
    assert failure.value.message == (
        f"the {provider} upstream answered 500: sandbox:fail=500 asked for this failure"
    )
    assert (await sandbox_stats(sandbox, http))["calls"] == MAX_ATTEMPTS


@pytest.mark.parametrize(
    ("status", "error_class"),
    [(429, UpstreamRateLimited), (529, UpstreamOverloaded)],
)
async def test_stream_failing_every_attempt_raises_before_any_event(
    router, sandbox, http, status, error_class
):
    events: list[StreamEvent] = []

    with pytest.raises(error_class) as failure:
        async for event in router.stream(call_to("anthropic", f"hi sandbox:fail={status}")):
            events.append(event)

    assert events == []
    assert failure.value.upstream_status == status
    assert (await sandbox_stats(sandbox, http))["calls"] == MAX_ATTEMPTS


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_rejected_request_fails_at_once(router, sandbox, http, provider):
    with pytest.raises(UpstreamRejected) as failure:
        await router.complete(call_to(provider, "hello sandbox:fail=400"))

    assert failure.value.status == 400
    assert failure.value.message == (
        f"the {provider} upstream answered 400: sandbox:fail=400 asked for this failure"
    )
    assert (await sandbox_stats(sandbox, http))["calls"] == 1


async def test_provider_validation_message_reaches_the_client(router, sandbox, http):
    with pytest.raises(UpstreamRejected) as failure:
        await router.complete(call_to("anthropic", "hello", temperature=1.5))

    assert failure.value.message == (
        "the anthropic upstream answered 400: temperature: must be a number from 0 to 1, got 1.5"
    )
    assert (await sandbox_stats(sandbox, http))["calls"] == 1


@pytest.mark.parametrize(
    ("provider", "setting"), [("anthropic", "ANTHROPIC_API_KEY"), ("openai", "OPENAI_API_KEY")]
)
async def test_refused_credentials_name_the_setting_not_the_key(
    router, sandbox, http, provider, setting
):
    with pytest.raises(UpstreamError) as failure:
        await router.complete(call_to(provider, "hello sandbox:fail=401"))

    assert type(failure.value) is UpstreamError
    assert failure.value.message == (
        f"the {provider} upstream refused our credentials (401): check {setting}"
    )
    assert (await sandbox_stats(sandbox, http))["calls"] == 1


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_unreachable_upstream_is_retried_then_reported_without_secrets():
    port = closed_port()
    model_router = ModelRouter(
        settings_for(
            anthropic_api_key="sk-ant-do-not-leak",
            anthropic_base_url=f"http://127.0.0.1:{port}",
        ),
        retry_policy=FAST_RETRIES,
    )

    with pytest.raises(UpstreamError) as failure:
        await model_router.complete(call_to("anthropic", "hello"))

    assert model_router.upstream_label("anthropic") == "anthropic"
    assert failure.value.message == (
        f"could not reach the anthropic upstream: the connection failed ({MAX_ATTEMPTS} attempts)"
    )
    assert str(port) not in failure.value.message
    await model_router.aclose()


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_stream_that_stalls_mid_way_raises_from_the_iterator(sandbox, http, provider):
    model_router = ModelRouter(
        settings_for(sandbox_url=sandbox.url, upstream_timeout_s=0.2), retry_policy=FAST_RETRIES
    )
    events: list[StreamEvent] = []

    with pytest.raises(UpstreamError) as failure:
        async for event in model_router.stream(
            call_to(provider, "slow one sandbox:stream_delay_ms=1000")
        ):
            events.append(event)

    assert events[0]["type"] == "message_start"
    assert failure.value.message == f"the {provider} stream broke off: nothing arrived for 0.2 s"
    assert (await sandbox_stats(sandbox, http))["calls"] == 1
    await model_router.aclose()


# Bytes on the wire.


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_utf8_split_across_network_chunks_arrives_whole(router, provider):
    text = "sandbox:split_utf8 naïve 👋🏽 世界 ok"
    call = call_to(provider, text)

    answer = await router.complete(call)
    events = await collect(router, call)

    expected = 'Sandbox reply to "naïve 👋🏽 世界 ok" (1 messages in context)'
    assert answer_text(answer) == expected
    deltas = [
        event["delta"]["text"]
        for event in events
        if event["type"] == "content_block_delta" and event["delta"]["type"] == "text_delta"
    ]
    assert "".join(deltas) == expected
    assert not any("\ufffd" in delta for delta in deltas)


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_consumer_may_stop_a_stream_early(router, provider):
    long_call = call_to(provider, "long one sandbox:tokens=300")

    async with aclosing(router.stream(long_call)) as events:
        first = await anext(events)
    answer = await router.complete(call_to(provider, "after that"))

    assert first["type"] == "message_start"
    assert answer_text(answer) == 'Sandbox reply to "after that" (1 messages in context)'


# Batches for the Ray Serve hop.


async def collect_batches(router: ModelRouter, call: ModelCall) -> list[list[StreamEvent]]:
    return [batch async for batch in router.stream_batches(call)]


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_stream_batches_hold_the_stream_in_order(router, provider):
    call = call_to(provider, "batch me sandbox:tokens=90")

    batches = await collect_batches(router, call)

    flattened = [event for batch in batches for event in batch]
    events = await collect(router, call)
    assert [event["type"] for event in flattened] == [event["type"] for event in events]
    assert answer_text(assembled(flattened)) == answer_text(assembled(events))
    assert all(batches)


async def test_stream_batches_never_wait_for_more_events(router):
    # Events paced 40 ms apart each arrive alone, so each must travel alone.
    call = call_to("anthropic", "paced sandbox:tokens=30 sandbox:stream_delay_ms=40")

    batches = await collect_batches(router, call)

    assert len(batches) > 8
    assert {len(batch) for batch in batches} == {1}


async def test_stream_batches_end_with_the_upstream_failure(router):
    call = call_to("anthropic", "break sandbox:tokens=60 sandbox:stream_cut=6")
    received: list[StreamEvent] = []

    with pytest.raises(UpstreamError, match="cut off"):
        async for batch in router.stream_batches(call):
            received.extend(batch)

    assert [event["type"] for event in received][:3] == [
        "message_start",
        "content_block_start",
        "ping",
    ]
    assert len(received) == 6
