"""Spend caps against a real Redis and a real MongoDB ledger."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.budget import window_at
from serve_app.errors import StoreUnavailable
from serve_app.stores.ledger import Ledger, LedgerEntry
from serve_app.stores.redis_client import connect_redis
from serve_app.stores.spend import SpendCounters

NOW_MS = 1_764_700_000_000  # 2025-12-02T18:26:40Z


def ledger_entry(key_id: str, call_id: str, cost_micros: int, at_ms: int = NOW_MS) -> LedgerEntry:
    return LedgerEntry(
        call_id=call_id,
        account_id="acct_1",
        key_id=key_id,
        end_user_id="u1",
        thread_id="thr_1",
        model="claude-haiku-4-5",
        upstream="sandbox",
        input_tokens=10,
        output_tokens=20,
        cache_read_input_tokens=0,
        cache_creation_input_tokens=0,
        upstream_cost_micros=cost_micros,
        cost_micros=cost_micros,
        created_at_ms=at_ms,
    )


@pytest.fixture
def counters(redis, mongo) -> SpendCounters:
    return SpendCounters(redis, Ledger(mongo.ledger), reservation_ttl_s=60)


async def test_reserve_admits_until_the_cap_then_refuses(counters):
    first = await counters.reserve("key_a", "month", 1_000, 600, "r1", NOW_MS)
    second = await counters.reserve("key_a", "month", 1_000, 600, "r2", NOW_MS)

    assert first.admitted and (first.spent_micros, first.reserved_micros) == (0, 600)
    assert not second.admitted
    assert (second.spent_micros, second.reserved_micros) == (0, 600)


async def test_settle_swaps_the_reservation_for_the_actual_cost(counters):
    await counters.reserve("key_a", "month", 1_000, 600, "r1", NOW_MS)
    await counters.settle("key_a", "r1", 150, window_at("month", NOW_MS).period_id)

    view = await counters.view("key_a", "month", NOW_MS)
    assert (view.spent_micros, view.reserved_micros) == (150, 0)
    assert (await counters.reserve("key_a", "month", 1_000, 850, "r2", NOW_MS)).admitted
    assert not (await counters.reserve("key_a", "month", 1_000, 1, "r3", NOW_MS)).admitted


async def test_release_gives_the_whole_reservation_back(counters):
    await counters.reserve("key_a", "month", 1_000, 1_000, "r1", NOW_MS)
    await counters.release("key_a", "r1")

    view = await counters.view("key_a", "month", NOW_MS)
    assert (view.spent_micros, view.reserved_micros) == (0, 0)


async def test_no_cap_admits_anything(counters):
    admission = await counters.reserve("key_a", "month", None, 10**12, "r1", NOW_MS)
    assert admission.admitted


async def test_concurrent_reservations_never_promise_more_than_the_cap(counters):
    results = await asyncio.gather(
        *[counters.reserve("key_a", "month", 1_000, 300, f"r{i}", NOW_MS) for i in range(40)]
    )
    assert sum(result.admitted for result in results) == 3


async def test_expired_reservations_of_a_dead_holder_are_swept(counters):
    await counters.reserve("key_a", "month", 1_000, 1_000, "crashed", NOW_MS)
    later_ms = NOW_MS + 61_000  # past the 60 s reservation TTL

    admission = await counters.reserve("key_a", "month", 1_000, 1_000, "r2", later_ms)
    assert admission.admitted


async def test_missing_counters_are_rebuilt_from_the_ledger(counters, redis, mongo):
    ledger = Ledger(mongo.ledger)
    await ledger.record(ledger_entry("key_a", "req_1:0", 700))
    await ledger.record(ledger_entry("key_a", "req_2:0", 200))
    last_month_ms = NOW_MS - 40 * 86_400_000
    await ledger.record(ledger_entry("key_a", "req_0:0", 5_000, at_ms=last_month_ms))
    await redis.flushdb()

    refused = await counters.reserve("key_a", "month", 1_000, 101, "r1", NOW_MS)
    admitted = await counters.reserve("key_a", "month", 1_000, 100, "r2", NOW_MS)

    assert not refused.admitted and refused.spent_micros == 900
    assert admitted.admitted


async def test_a_new_period_starts_from_the_ledger_of_that_period(counters, mongo):
    await counters.reserve("key_a", "day", 1_000, 900, "r1", NOW_MS)
    await counters.settle("key_a", "r1", 900, window_at("day", NOW_MS).period_id)
    tomorrow_ms = NOW_MS + 86_400_000

    view = await counters.view("key_a", "day", tomorrow_ms)
    assert view.spent_micros == 0
    assert view.window.period_id == window_at("day", tomorrow_ms).period_id


async def test_ledger_writes_are_idempotent(mongo):
    ledger = Ledger(mongo.ledger)
    await ledger.record(ledger_entry("key_a", "req_1:0", 700))
    await ledger.record(ledger_entry("key_a", "req_1:0", 700))

    assert await ledger.spent_micros("key_a", 0, None) == 700


async def test_unreachable_redis_fails_closed(mongo):
    dead = connect_redis("redis://127.0.0.1:1/0")
    counters = SpendCounters(dead, Ledger(mongo.ledger), reservation_ttl_s=60)

    with pytest.raises(StoreUnavailable):
        await counters.reserve("key_a", "month", 1_000, 1, "r1", NOW_MS)
    await dead.aclose()
