"""Streamed turns through the whole stack (`threadgate up`, Ray Serve, HAProxy), read the
way a plain HTTP client reads them: line by line, `data:` lines only."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.e2e.conftest import auth, mint_key, new_thread, sandbox_calls, send
from tests.streams import ReadStream, read_stream, stored_text

PERSIST_DEADLINE_S = 5.0
EVENT_ORDER = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
]


async def stream_turn(
    http: httpx.AsyncClient, secret: str, thread_id: str, content: str, **fields
) -> tuple[httpx.Response, ReadStream]:
    headers = {**auth(secret), **fields.pop("headers", {})}
    body = {"model": "claude-sonnet-4-6", "max_tokens": 256, "content": content, **fields}
    async with http.stream(
        "POST", f"/v1/threads/{thread_id}/messages", json={**body, "stream": True}, headers=headers
    ) as response:
        read = await read_stream(response)
    return response, read


async def stored_messages(http: httpx.AsyncClient, secret: str, thread_id: str) -> list[dict]:
    listed = await http.get(
        f"/v1/threads/{thread_id}/messages", headers=auth(secret), params={"limit": 100}
    )
    return listed.json()["data"]


async def key_view(http: httpx.AsyncClient, master_key: str, key_id: str) -> dict:
    return (await http.get(f"/v1/keys/{key_id}", headers=auth(master_key))).json()


def distinct_in_order(types: list[str]) -> list[str]:
    kept: list[str] = []
    for kind in types:
        if kind != "ping" and kind not in kept:
            kept.append(kind)
    return kept


@pytest.mark.parametrize("model", ["claude-sonnet-4-6", "gpt-5.4"])
async def test_streamed_text_is_the_stored_message(http, master_key, model):
    key = await mint_key(http, master_key, max_spend_usd=1.0)
    thread = await new_thread(http, key["secret"])

    response, read = await stream_turn(
        http, key["secret"], thread["id"], "tell me a story sandbox:tokens=120", model=model
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-threadgate-upstream"] == "sandbox"
    assert distinct_in_order(read.types) == EVENT_ORDER
    assert read.types.count("content_block_delta") > 5  # streamed, not sent whole

    messages = await stored_messages(http, key["secret"], thread["id"])
    assert [m["role"] for m in messages] == ["user", "assistant"]
    answer = messages[1]
    assert read.text == stored_text(answer)
    assert answer["status"] == "complete"
    assert answer["model"] == model
    assert answer["usage"]["output_tokens"] == 120

    start = read.first("message_start")["message"]
    assert (start["id"], start["model"], start["thread_id"], start["seq"]) == (
        answer["id"],
        model,
        thread["id"],
        2,
    )
    assert read.first("message_delta")["usage"]["output_tokens"] == 120
    assert read.first("message_stop")["cost_micros"] == answer["cost_micros"]
    view = await key_view(http, master_key, key["id"])
    assert (view["spent_micros"], view["reserved_micros"]) == (answer["cost_micros"], 0)


async def test_client_leaving_after_the_first_delta_loses_nothing(http, master_key, stack):
    key = await mint_key(http, master_key, max_spend_usd=1.0)
    thread = await new_thread(http, key["secret"])
    content = "I will hang up sandbox:tokens=80 sandbox:stream_delay_ms=60"
    body = {"model": "claude-sonnet-4-6", "max_tokens": 256, "content": content, "stream": True}

    left_at = time.monotonic()
    async with http.stream(
        "POST", f"/v1/threads/{thread['id']}/messages", json=body, headers=auth(key["secret"])
    ) as response:
        read = await read_stream(response, stop_after_first_delta=True)
    assert read.types[-1] == "content_block_delta"

    # The gateway drains the upstream to its end (the default) and stores the whole turn.
    answer = None
    while time.monotonic() - left_at < PERSIST_DEADLINE_S:
        messages = await stored_messages(http, key["secret"], thread["id"])
        if len(messages) == 2:
            answer = messages[1]
            break
        await asyncio.sleep(0.1)
    assert answer is not None, f"the turn was not stored within {PERSIST_DEADLINE_S} s"
    assert answer["status"] == "complete"
    assert answer["usage"]["output_tokens"] == 80
    assert stored_text(answer).startswith(read.text)

    # The ledger has its full cost.
    usage = await http.get(
        "/v1/usage",
        params={"from_ms": 0, "to_ms": int(time.time() * 1000) + 1000},
        headers=auth(master_key),
    )
    row = next(row for row in usage.json()["by_key"] if row["key_id"] == key["id"])
    assert (row["requests"], row["output_tokens"]) == (1, 80)
    assert row["cost_micros"] == answer["cost_micros"]
    assert (await key_view(http, master_key, key["id"]))["spent_micros"] == answer["cost_micros"]

    # The next turn's history holds it.
    after = await send(http, key["secret"], thread["id"], "still there?")
    assert "(3 messages in context)" in stored_text(after.json())


@pytest.mark.parametrize("model", ["claude-haiku-4-5", "gpt-5.4"])
async def test_multibyte_characters_split_across_chunks_arrive_whole(http, master_key, model):
    key = await mint_key(http, master_key, max_spend_usd=1.0)
    thread = await new_thread(http, key["secret"])
    # The sandbox quotes the message back, so its answer carries these characters too,
    # and writes its stream 1 to 3 bytes at a time, cutting through every one of them.
    content = "東京の天気 🌧️ 寿司 🍣 👩🏽‍💻 sandbox:split_utf8"

    response, read = await stream_turn(http, key["secret"], thread["id"], content, model=model)

    assert response.status_code == 200
    assert "\ufffd" not in read.raw.decode("utf-8")
    assert "東京の天気 🌧️ 寿司 🍣 👩🏽‍💻" in read.text
    messages = await stored_messages(http, key["secret"], thread["id"])
    assert stored_text(messages[0]) == content
    assert stored_text(messages[1]) == read.text
    assert not any("\ufffd" in stored_text(message) for message in messages)


async def test_streamed_turn_over_the_cap_gets_402_before_the_upstream(http, master_key, stack):
    key = await mint_key(http, master_key, max_spend_usd=0.001)
    thread = await new_thread(http, key["secret"])
    calls_before = await sandbox_calls(stack)

    response, _ = await stream_turn(
        http, key["secret"], thread["id"], "expensive", max_tokens=64000
    )

    assert response.status_code == 402
    assert response.headers["content-type"] == "application/json"
    assert await sandbox_calls(stack) == calls_before
    assert await stored_messages(http, key["secret"], thread["id"]) == []


async def test_streamed_turn_failing_before_its_first_event_is_a_plain_error(
    http, master_key, stack
):
    key = await mint_key(http, master_key, max_spend_usd=1.0)
    thread = await new_thread(http, key["secret"])

    response, _ = await stream_turn(http, key["secret"], thread["id"], "no sandbox:fail=400")

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert await stored_messages(http, key["secret"], thread["id"]) == []
    view = await key_view(http, master_key, key["id"])
    assert (view["spent_micros"], view["reserved_micros"]) == (0, 0)


async def test_idempotency_key_replays_a_streamed_turn_without_a_second_charge(
    http, master_key, stack
):
    key = await mint_key(http, master_key, max_spend_usd=1.0)
    thread = await new_thread(http, key["secret"])
    headers = {"idempotency-key": "stream-0001"}
    calls_before = await sandbox_calls(stack)

    first_response, first = await stream_turn(
        http, key["secret"], thread["id"], "once sandbox:tokens=90", headers=headers
    )
    again_response, again = await stream_turn(
        http, key["secret"], thread["id"], "once sandbox:tokens=90", headers=headers
    )

    assert first_response.status_code == again_response.status_code == 200
    assert again_response.headers["idempotent-replayed"] == "true"
    assert again.text == first.text
    assert distinct_in_order(again.types) == EVENT_ORDER
    assert (
        again.first("message_start")["message"]["id"]
        == first.first("message_start")["message"]["id"]
    )
    assert again.first("message_stop")["cost_micros"] == first.first("message_stop")["cost_micros"]
    assert await sandbox_calls(stack) - calls_before == 1
    assert len(await stored_messages(http, key["secret"], thread["id"])) == 2
    spent = (await key_view(http, master_key, key["id"]))["spent_micros"]
    assert spent == first.first("message_stop")["cost_micros"]


async def test_a_stream_cut_before_any_text_leaves_the_thread_usable(http, master_key):
    key = await mint_key(http, master_key, max_spend_usd=1.0)
    thread = await new_thread(http, key["secret"])

    # The sandbox drops the connection after message_start and content_block_start.
    response, read = await stream_turn(
        http, key["secret"], thread["id"], "sandbox:stream_cut=2 hi", model="claude-haiku-4-5"
    )
    after = await send(http, key["secret"], thread["id"], "still usable?", model="claude-haiku-4-5")

    assert response.status_code == 200 and read.types[-1] == "error"
    messages = await stored_messages(http, key["secret"], thread["id"])
    assert messages[1]["status"] == "interrupted"
    assert messages[1]["content"] == []
    assert after.status_code == 200, after.text
    assert "(2 messages in context)" in stored_text(after.json())
