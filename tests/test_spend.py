"""Spend caps against a real Redis and a real MongoDB ledger."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.budget import BudgetPeriod, window_at
from serve_app.clock import now_ms as clock_ms
from serve_app.errors import StoreUnavailable
from serve_app.stores.ledger import Ledger, LedgerEntry, Reservation
from serve_app.stores.redis_client import connect_redis
from serve_app.stores.spend import Admission, SpendCounters

NOW_MS = 1_764_700_000_000  # 2025-12-02T18:26:40Z
MONTH = window_at("month", NOW_MS).period_id
TTL_S = 60


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


def reservation(call_id: str, amount_micros: int, key_id: str = "key_a") -> Reservation:
    return Reservation(
        call_id=call_id,
        account_id="acct_1",
        key_id=key_id,
        end_user_id="u1",
        thread_id="thr_1",
        model="claude-haiku-4-5",
        amount_micros=amount_micros,
    )


async def reserve(
    counters: SpendCounters,
    call_id: str,
    amount_micros: int,
    cap_micros: int | None = 1_000,
    at_ms: int = NOW_MS,
    period: BudgetPeriod = "month",
) -> Admission:
    return await counters.reserve(reservation(call_id, amount_micros), period, cap_micros, at_ms)


@pytest.fixture
def ledger(mongo) -> Ledger:
    return Ledger(mongo.ledger)


@pytest.fixture
def counters(redis, ledger) -> SpendCounters:
    return SpendCounters(redis, ledger, reservation_ttl_s=TTL_S)


async def test_reserve_admits_until_the_cap_then_refuses(counters):
    first = await reserve(counters, "r1", 600)
    second = await reserve(counters, "r2", 600)

    assert first.admitted and (first.spent_micros, first.reserved_micros) == (0, 600)
    assert not second.admitted
    assert (second.spent_micros, second.reserved_micros) == (0, 600)


async def test_settle_swaps_the_reservation_for_the_actual_cost(counters):
    await reserve(counters, "r1", 600)
    await counters.settle("key_a", "r1", 150, MONTH)

    view = await counters.view("key_a", "month", NOW_MS)
    assert (view.spent_micros, view.reserved_micros) == (150, 0)
    assert (await reserve(counters, "r2", 850)).admitted
    assert not (await reserve(counters, "r3", 1)).admitted


async def test_release_gives_the_whole_reservation_back(counters, mongo):
    await reserve(counters, "r1", 1_000)
    await counters.release("key_a", "r1")

    view = await counters.view("key_a", "month", NOW_MS)
    assert (view.spent_micros, view.reserved_micros) == (0, 0)
    assert await mongo.ledger.count_documents({}) == 0


async def test_no_cap_admits_anything(counters):
    admission = await reserve(counters, "r1", 10**12, cap_micros=None)
    assert admission.admitted


async def test_concurrent_reservations_never_promise_more_than_the_cap(counters, mongo):
    results = await asyncio.gather(*[reserve(counters, f"r{i}", 300) for i in range(40)])

    assert sum(result.admitted for result in results) == 3
    # Refused calls leave nothing in the ledger; admitted ones are there, in flight.
    assert await mongo.ledger.count_documents({"state": "reserved"}) == 3


async def test_a_retried_reservation_is_held_once(counters):
    first = await reserve(counters, "r1", 600)
    again = await reserve(counters, "r1", 600)

    assert first.admitted and again.admitted
    assert again.reserved_micros == 600


class CountingLedger(Ledger):
    """The real ledger, counting the reservations written to it."""

    reserved_calls = 0

    async def reserve(self, reservation: Reservation, expires_at_ms: int, now_ms: int) -> None:
        self.reserved_calls += 1
        await super().reserve(reservation, expires_at_ms, now_ms)


async def test_a_key_at_its_cap_is_refused_without_touching_the_ledger(redis, mongo):
    ledger = CountingLedger(mongo.ledger)
    counters = SpendCounters(redis, ledger, reservation_ttl_s=TTL_S)
    assert (await reserve(counters, "r1", 900)).admitted

    refusals = [await reserve(counters, f"again{i}", 200) for i in range(5)]

    assert not any(refusal.admitted for refusal in refusals)
    assert (refusals[-1].spent_micros, refusals[-1].reserved_micros) == (0, 900)
    assert ledger.reserved_calls == 1  # only the admitted call was written


async def test_room_given_back_by_a_settled_call_is_used_at_once(counters):
    await reserve(counters, "r1", 900)
    assert not (await reserve(counters, "r2", 200)).admitted  # remembers 100 left

    await counters.settle("key_a", "r1", 300, MONTH)

    assert (await reserve(counters, "r3", 700)).admitted


async def test_expired_reservations_of_a_dead_holder_are_swept(counters):
    await reserve(counters, "crashed", 1_000)
    later_ms = NOW_MS + (TTL_S + 1) * 1000

    admission = await reserve(counters, "r2", 1_000, at_ms=later_ms)
    assert admission.admitted


async def test_an_expired_reservation_whose_call_was_billed_counts_from_the_ledger(
    counters, ledger
):
    # The holder settled the ledger, then lost Redis before moving the counters.
    await reserve(counters, "r1", 600)
    await ledger.record(ledger_entry("key_a", "r1", 450))
    later_ms = NOW_MS + (TTL_S + 1) * 1000

    refused = await reserve(counters, "r2", 551, at_ms=later_ms)
    admitted = await reserve(counters, "r3", 550, at_ms=later_ms)

    assert not refused.admitted and (refused.spent_micros, refused.reserved_micros) == (450, 0)
    assert admitted.admitted


async def test_missing_counters_are_rebuilt_from_the_ledger(counters, redis, ledger):
    await ledger.record(ledger_entry("key_a", "req_1:0", 700))
    await ledger.record(ledger_entry("key_a", "req_2:0", 200))
    last_month_ms = NOW_MS - 40 * 86_400_000
    await ledger.record(ledger_entry("key_a", "req_0:0", 5_000, at_ms=last_month_ms))
    await redis.flushdb()

    refused = await reserve(counters, "r1", 101)
    admitted = await reserve(counters, "r2", 100)

    assert not refused.admitted and refused.spent_micros == 900
    assert admitted.admitted


async def test_calls_in_flight_when_redis_is_wiped_still_hold_the_cap(counters, redis, ledger):
    # Three calls in flight and one settled; then Redis loses everything.
    await ledger.record(ledger_entry("key_a", "done", 100))
    for call_id in ("a", "b", "c"):
        assert (await reserve(counters, call_id, 250, cap_micros=None)).admitted
    await redis.flushdb()

    refused = await reserve(counters, "d", 151)
    admitted = await reserve(counters, "e", 150)

    assert not refused.admitted
    assert (refused.spent_micros, refused.reserved_micros) == (100, 750)
    assert admitted.admitted
    # The calls that were in flight settle against the rebuilt counters as usual.
    for call_id in ("a", "b", "c"):
        await ledger.record(ledger_entry("key_a", call_id, 200))
        await counters.settle("key_a", call_id, 200, MONTH)
    view = await counters.view("key_a", "month", NOW_MS)
    assert (view.spent_micros, view.reserved_micros) == (700, 150)


async def test_a_rebuild_that_read_the_ledger_too_early_cannot_overwrite_newer_counters(
    counters, redis
):
    await redis.flushdb()
    # A rebuilder saw the counters missing (epoch "") and stalled before seeding...
    stalled_epoch = ""
    # ...while another request rebuilt them and was admitted.
    assert (await reserve(counters, "fresh", 900)).admitted

    await counters._rebuild("key_a", window_at("month", NOW_MS), stalled_epoch, NOW_MS)

    view = await counters.view("key_a", "month", NOW_MS)
    assert view.reserved_micros == 900
    assert not (await reserve(counters, "more", 101)).admitted


async def test_a_long_call_keeps_its_reservation_alive(redis, ledger):
    counters = SpendCounters(redis, ledger, reservation_ttl_s=0.3)
    call = reservation("long", 900)
    assert (await counters.reserve(call, "month", 1_000, clock_ms())).admitted

    async with counters.kept_alive("key_a", "long"):
        await asyncio.sleep(0.6)  # twice the TTL: only renewals keep it
        now_ms = clock_ms()
        assert not (await reserve(counters, "other", 101, at_ms=now_ms)).admitted
        await redis.flushdb()
        assert not (await reserve(counters, "other", 101, at_ms=now_ms)).admitted


async def test_a_new_period_starts_from_the_ledger_of_that_period(counters):
    day = window_at("day", NOW_MS).period_id
    await reserve(counters, "r1", 900, period="day")
    await counters.settle("key_a", "r1", 900, day)
    tomorrow_ms = NOW_MS + 86_400_000

    view = await counters.view("key_a", "day", tomorrow_ms)
    assert view.spent_micros == 0
    assert view.window.period_id == window_at("day", tomorrow_ms).period_id


async def test_ledger_writes_are_idempotent(ledger):
    await ledger.record(ledger_entry("key_a", "req_1:0", 700))
    await ledger.record(ledger_entry("key_a", "req_1:0", 700))

    assert await ledger.spent_micros("key_a", 0, None) == 700


async def test_unreachable_redis_fails_closed_and_leaves_no_reservation(mongo, ledger):
    dead = connect_redis("redis://127.0.0.1:1/0")
    counters = SpendCounters(dead, ledger, reservation_ttl_s=TTL_S)

    with pytest.raises(StoreUnavailable):
        await reserve(counters, "r1", 1)
    assert await mongo.ledger.count_documents({}) == 0
    await dead.aclose()
