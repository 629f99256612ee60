"""Leases renewed while work runs, and the renewing stopping when the work ends."""

from __future__ import annotations

import asyncio

from redis.exceptions import TimeoutError as RedisTimeout

from serve_app.stores.renewal import renewed


async def test_renews_every_interval_while_the_body_runs():
    renewals: list[float] = []

    async def renew() -> None:
        renewals.append(asyncio.get_running_loop().time())

    async with renewed(renew, 0.05, "test lease"):
        while len(renewals) < 3:
            await asyncio.sleep(0.01)

    count = len(renewals)
    await asyncio.sleep(0.15)
    assert len(renewals) == count  # nothing renews once the body has left


async def test_a_failed_renewal_is_tried_again(caplog):
    attempts = 0

    async def renew() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RedisTimeout("Timeout reading from 127.0.0.1:6379")

    async with renewed(renew, 0.02, "test lease"):
        while attempts < 2:
            await asyncio.sleep(0.01)

    assert "renewing test lease failed" in caplog.text


async def test_stops_even_when_a_renewal_turns_the_cancel_into_a_timeout():
    # What redis-py did while Redis was paused: the cancel arrived as its own read timed
    # out, and came back as a TimeoutError instead of CancelledError.
    renewing = asyncio.Event()

    async def renew() -> None:
        renewing.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RedisTimeout("Timeout reading from 127.0.0.1:6379") from None

    async def hold() -> None:
        async with renewed(renew, 0.01, "test lease"):
            await renewing.wait()

    holder = asyncio.create_task(hold())
    # Not wait_for: cancelling a holder stuck this way would hang the same way.
    done, _ = await asyncio.wait({holder}, timeout=5)

    assert holder in done, "the renewing loop ignored its stop"
