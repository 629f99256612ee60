"""Spend caps hold under concurrency and survive a Redis wipe (invariants 1 and 3)."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from tests.e2e.conftest import auth, mint_key, new_thread, sandbox_calls, send


async def test_fifty_concurrent_turns_never_overspend(http, master_key, stack):
    key = await mint_key(http, master_key, max_spend_usd=0.05)
    threads = await asyncio.gather(*[new_thread(http, key["secret"]) for _ in range(50)])
    calls_before = await sandbox_calls(stack)

    # Each turn may cost ~16,100 micros and really costs ~14,500 (900 of 1,000 tokens):
    # three fit in the 50,000 cap. The delay keeps the admitted ones in flight while the
    # rest arrive, so the refusals come from reservations, not from settled spend.
    content = "sandbox:tokens=900 sandbox:delay_ms=1500 write a long answer"
    responses = await asyncio.gather(
        *[send(http, key["secret"], thread["id"], content, max_tokens=1000) for thread in threads]
    )

    statuses = [response.status_code for response in responses]
    admitted = statuses.count(200)
    assert statuses.count(402) == 50 - admitted
    assert admitted == 3
    refused = next(response.json() for response in responses if response.status_code == 402)
    assert refused["error"]["type"] == "spend_cap_exceeded"
    assert refused["error"]["max_spend_micros"] == 50_000
    assert refused["error"]["resets_at"].endswith("Z")
    assert await sandbox_calls(stack) - calls_before == admitted

    settled = await http.get(f"/v1/keys/{key['id']}", headers=auth(master_key))
    billed = sum(response.json()["cost_micros"] for response in responses if response.is_success)
    assert settled.json()["spent_micros"] == billed <= 50_000
    assert settled.json()["reserved_micros"] == 0


async def test_admission_after_a_redis_wipe_is_rebuilt_from_the_ledger(http, master_key, stack):
    key = await mint_key(http, master_key, max_spend_usd=1.0)
    thread = await new_thread(http, key["secret"])
    first = await send(http, key["secret"], thread["id"], "hello", max_tokens=100)
    assert first.status_code == 200, first.text
    spent = first.json()["cost_micros"]

    # Cap the key at exactly what it spent: the next turn must be refused.
    patched = await http.patch(
        f"/v1/keys/{key['id']}", json={"max_spend_usd": spent / 1e6}, headers=auth(master_key)
    )
    assert patched.json()["max_spend_micros"] == spent
    refused = await send(http, key["secret"], thread["id"], "again", max_tokens=100)
    assert refused.status_code == 402
    requested = refused.json()["error"]["requested_micros"]

    redis = Redis.from_url(stack.redis_url)
    await redis.flushall()

    still_refused = await send(http, key["secret"], thread["id"], "again", max_tokens=100)
    assert still_refused.status_code == 402
    assert still_refused.json()["error"]["spent_micros"] == spent
    assert still_refused.json()["error"]["requested_micros"] == requested

    # One micro-dollar short, then exactly enough: admission is exact after the rebuild.
    for extra, expected_status in ((requested - 1, 402), (requested, 200)):
        await http.patch(
            f"/v1/keys/{key['id']}",
            json={"max_spend_usd": (spent + extra) / 1e6},
            headers=auth(master_key),
        )
        await redis.flushall()
        response = await send(http, key["secret"], thread["id"], "again", max_tokens=100)
        assert response.status_code == expected_status, response.text

    await redis.flushall()
    view = await http.get(f"/v1/keys/{key['id']}", headers=auth(master_key))
    assert view.json()["spent_micros"] == spent + response.json()["cost_micros"]
    await redis.aclose()


async def test_turns_in_flight_when_redis_is_wiped_still_hold_the_cap(http, master_key, stack):
    key = await mint_key(http, master_key, max_spend_usd=0.05)
    threads = await asyncio.gather(*[new_thread(http, key["secret"]) for _ in range(13)])
    content = "sandbox:tokens=900 sandbox:delay_ms=2000 write a long answer"

    # Three turns fill the cap with their reservations (~16,100 micros each)...
    in_flight = [
        asyncio.create_task(send(http, key["secret"], thread["id"], content, max_tokens=1000))
        for thread in threads[:3]
    ]
    for _ in range(100):
        view = await http.get(f"/v1/keys/{key['id']}", headers=auth(master_key))
        if view.json()["reserved_micros"] > 45_000:
            break
        await asyncio.sleep(0.02)
    assert view.json()["reserved_micros"] > 45_000

    # ...then Redis loses everything while they run: the ledger still knows them.
    redis = Redis.from_url(stack.redis_url)
    await redis.flushall()
    await redis.aclose()
    calls_before = await sandbox_calls(stack)
    late = await asyncio.gather(
        *[
            send(http, key["secret"], thread["id"], content, max_tokens=1000)
            for thread in threads[3:]
        ]
    )

    assert [response.status_code for response in late] == [402] * 10
    assert await sandbox_calls(stack) == calls_before
    admitted = await asyncio.gather(*in_flight)
    assert [response.status_code for response in admitted] == [200] * 3
    settled = await http.get(f"/v1/keys/{key['id']}", headers=auth(master_key))
    billed = sum(response.json()["cost_micros"] for response in admitted)
    assert settled.json()["spent_micros"] == billed <= 50_000
    assert settled.json()["reserved_micros"] == 0
