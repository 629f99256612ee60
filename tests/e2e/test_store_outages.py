"""A store freezing while a turn is in flight: the turn the upstream answered is stored and
billed once, the client hears success, and its retry with the same Idempotency-Key replays
the answer instead of paying for a second one.

The store is paused with SIGSTOP, as a stalled disk, a long GC pause or a network
partition would pause it, then resumed; the session's stack goes on serving afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import psutil

from tests.e2e.conftest import Stack, auth, mint_key, new_thread


def process_listening_on(url: str) -> psutil.Process:
    port = urlparse(url).port
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
            return psutil.Process(connection.pid)
    raise AssertionError(f"no process serves {url}")


@contextlib.contextmanager
def paused(process: psutil.Process) -> Iterator[None]:
    process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        process.send_signal(signal.SIGCONT)


async def slow_turn(http, secret: str, thread_id: str, idempotency_key: str):
    return await http.post(
        f"/v1/threads/{thread_id}/messages",
        json={
            "model": "claude-haiku-4-5",
            "max_tokens": 100,
            "content": "answer slowly sandbox:delay_ms=1500",
        },
        headers={**auth(secret), "idempotency-key": idempotency_key},
        timeout=120,
    )


async def billed_calls(http, master_key: str, key_id: str) -> dict:
    usage = await http.get(
        "/v1/usage",
        params={"from_ms": 0, "to_ms": int(time.time() * 1000) + 60_000},
        headers=auth(master_key),
    )
    return next(row for row in usage.json()["by_key"] if row["key_id"] == key_id)


async def assert_stored_and_billed_once(http, master_key, key, thread, first, retry) -> None:
    assert first.status_code == 200, first.text
    assert retry.status_code == 200, retry.text
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == first.json()

    listed = await http.get(f"/v1/threads/{thread['id']}/messages", headers=auth(key["secret"]))
    assert [m["seq"] for m in listed.json()["data"]] == [1, 2]
    row = await billed_calls(http, master_key, key["id"])
    assert (row["requests"], row["cost_micros"]) == (1, first.json()["cost_micros"])

    # The counters hold the call: settled, or still reserved at its worst case if the
    # settling never reached Redis (then the ledger decides once the reservation expires).
    view = (await http.get(f"/v1/keys/{key['id']}", headers=auth(master_key))).json()
    assert view["spent_micros"] + view["reserved_micros"] >= first.json()["cost_micros"]
    assert view["spent_micros"] <= first.json()["cost_micros"]


async def turn_across_a_pause(http, secret, thread_id, store, pause_s: float, idempotency_key):
    """A slow turn with `store` paused for `pause_s` while the upstream answers, then its
    retry with the same Idempotency-Key: (first response, retry response)."""
    turn = asyncio.create_task(slow_turn(http, secret, thread_id, idempotency_key))
    await asyncio.sleep(0.5)  # the upstream call is under way
    with paused(store):
        await asyncio.sleep(pause_s)
    first = await turn
    retry = await slow_turn(http, secret, thread_id, idempotency_key)
    return first, retry


async def test_mongodb_pausing_while_a_turn_is_stored(http, master_key, stack: Stack):
    key = await mint_key(http, master_key, max_spend_usd=1.0)
    thread = await new_thread(http, key["secret"])
    mongodb = process_listening_on(stack.mongodb_uri)

    # Past the driver's 5 s server selection timeout.
    first, retry = await turn_across_a_pause(
        http, key["secret"], thread["id"], mongodb, 8, "mongo-pause-1"
    )

    await assert_stored_and_billed_once(http, master_key, key, thread, first, retry)


async def test_redis_pausing_while_a_turn_is_settled(http, master_key, stack: Stack):
    key = await mint_key(http, master_key, max_spend_usd=1.0)
    thread = await new_thread(http, key["secret"])
    redis = process_listening_on(stack.redis_url)

    # Past the client's 10 s socket timeout, and across a renewal of the turn lock.
    first, retry = await turn_across_a_pause(
        http, key["secret"], thread["id"], redis, 11, "redis-pause-1"
    )

    await assert_stored_and_billed_once(http, master_key, key, thread, first, retry)
    after = await http.post(
        f"/v1/threads/{thread['id']}/messages",
        json={"model": "claude-haiku-4-5", "max_tokens": 100, "content": "and now?"},
        headers=auth(key["secret"]),
        timeout=120,
    )
    # The next turn's history holds the turn stored while Redis was away.
    assert after.status_code == 200, after.text
    assert "(3 messages in context)" in after.json()["content"][0]["text"]
