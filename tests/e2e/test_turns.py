"""Turn serialization on one thread, Idempotency-Key, and key management."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

from tests.e2e.conftest import auth, mint_key, new_thread, sandbox_calls, send


async def test_concurrent_sends_on_one_thread_are_serialized(http, master_key):
    key = await mint_key(http, master_key, max_spend_usd=1.0)
    thread = await new_thread(http, key["secret"])

    responses = await asyncio.gather(
        *[send(http, key["secret"], thread["id"], f"message {i}") for i in range(10)]
    )

    assert all(response.status_code == 200 for response in responses)
    listed = await http.get(
        f"/v1/threads/{thread['id']}/messages", headers=auth(key["secret"]), params={"limit": 50}
    )
    messages = listed.json()["data"]
    assert [m["seq"] for m in messages] == list(range(1, 21))
    assert [m["role"] for m in messages] == ["user", "assistant"] * 10
    contexts = [
        int(re.search(r"\((\d+) messages in context\)", m["content"][0]["text"]).group(1))
        for m in messages
        if m["role"] == "assistant"
    ]
    assert contexts == list(range(1, 20, 2))
    sent = {m["content"][0]["text"] for m in messages if m["role"] == "user"}
    assert sent == {f"message {i}" for i in range(10)}


async def test_idempotency_key_replays_without_a_second_charge(http, master_key, stack):
    key = await mint_key(http, master_key, max_spend_usd=1.0)
    thread = await new_thread(http, key["secret"])
    headers = {**auth(key["secret"]), "idempotency-key": "turn-0001"}
    body = {"model": "gpt-5.4-mini", "max_tokens": 64, "content": "charge me once"}
    calls_before = await sandbox_calls(stack)

    first = await http.post(f"/v1/threads/{thread['id']}/messages", json=body, headers=headers)
    # The same request, re-serialized by the client's retry: other spacing, other order.
    again = await http.post(
        f"/v1/threads/{thread['id']}/messages",
        content=json.dumps(dict(reversed(body.items())), indent=2),
        headers={**headers, "content-type": "application/json"},
    )
    changed = await http.post(
        f"/v1/threads/{thread['id']}/messages", json={**body, "content": "other"}, headers=headers
    )

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert changed.status_code == 409
    assert changed.json()["error"]["type"] == "conflict_error"
    assert await sandbox_calls(stack) - calls_before == 1
    view = await http.get(f"/v1/keys/{key['id']}", headers=auth(master_key))
    assert view.json()["spent_micros"] == first.json()["cost_micros"]
    listed = await http.get(f"/v1/threads/{thread['id']}/messages", headers=auth(key["secret"]))
    assert len(listed.json()["data"]) == 2


async def test_keys_are_listed_read_changed_and_secrets_shown_once(http, master_key):
    key = await mint_key(http, master_key, name="alice", max_spend_usd=2.5, budget_period="day")

    read = await http.get(f"/v1/keys/{key['id']}", headers=auth(master_key))
    listed = await http.get("/v1/keys", headers=auth(master_key), params={"limit": 100})
    patched = await http.patch(
        f"/v1/keys/{key['id']}",
        json={"max_spend_usd": None, "name": "alice-2"},
        headers=auth(master_key),
    )

    assert key["secret"].startswith("tgk_live_") and len(key["secret"]) >= 9 + 43
    assert read.json()["max_spend_micros"] == 2_500_000
    assert read.json()["budget_period"] == "day"
    assert "secret" not in read.json()
    assert key["secret"] not in listed.text
    assert key["id"] in [row["id"] for row in listed.json()["data"]]
    assert patched.json()["max_spend_micros"] is None
    assert patched.json()["name"] == "alice-2"


async def test_threads_are_listed_by_end_user_and_deleted_with_their_messages(http, master_key):
    key = await mint_key(http, master_key)
    mine = await new_thread(http, key["secret"], end_user_id="bob")
    await new_thread(http, key["secret"], end_user_id="carol")
    await send(http, key["secret"], mine["id"], "remember me")

    by_bob = await http.get(
        "/v1/threads", params={"end_user_id": "bob"}, headers=auth(key["secret"])
    )
    deleted = await http.delete(f"/v1/threads/{mine['id']}", headers=auth(key["secret"]))
    gone = await http.get(f"/v1/threads/{mine['id']}/messages", headers=auth(key["secret"]))

    assert [thread["id"] for thread in by_bob.json()["data"]] == [mine["id"]]
    assert deleted.status_code == 200
    assert gone.status_code == 404


async def test_client_leaving_a_plain_turn_mid_call_loses_nothing(http, master_key):
    key = await mint_key(http, master_key, max_spend_usd=1.0)
    thread = await new_thread(http, key["secret"])

    leaving = asyncio.create_task(
        send(http, key["secret"], thread["id"], "slow answer sandbox:delay_ms=1500")
    )
    await asyncio.sleep(0.5)  # the upstream call is under way
    leaving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await leaving

    # The model call goes on without the client; the turn is stored and billed.
    messages: list[dict] = []
    for _ in range(50):
        listed = await http.get(f"/v1/threads/{thread['id']}/messages", headers=auth(key["secret"]))
        messages = listed.json()["data"]
        if len(messages) == 2:
            break
        await asyncio.sleep(0.1)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["status"] == "complete"
    view = await http.get(f"/v1/keys/{key['id']}", headers=auth(master_key))
    assert view.json()["spent_micros"] == messages[1]["cost_micros"] > 0
    assert view.json()["reserved_micros"] == 0
