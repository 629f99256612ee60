"""Turns that outlive their request are waited for when a replica stops."""

from __future__ import annotations

import asyncio

from serve_app.engine.in_flight import InFlightTurns


async def test_waits_for_a_turn_to_finish():
    turns = InFlightTurns()
    finished = asyncio.Event()

    async def turn() -> None:
        await asyncio.sleep(0.05)
        finished.set()

    turns.track(asyncio.create_task(turn()))
    await turns.wait(timeout_s=5)

    assert finished.is_set()


async def test_a_turn_past_the_wait_is_interrupted_and_stores_what_it_has():
    turns = InFlightTurns()
    reader = asyncio.create_task(asyncio.sleep(60))  # an upstream that goes on and on
    stored: list[str] = []

    async def streamed_turn() -> None:
        await asyncio.wait([reader])
        stored.append("interrupted" if reader.cancelled() else "complete")

    turns.track(asyncio.create_task(streamed_turn()), interrupt=reader.cancel)
    await turns.wait(timeout_s=0.05)

    assert stored == ["interrupted"]


async def test_nothing_to_wait_for_returns_at_once():
    turns = InFlightTurns()
    done = asyncio.create_task(asyncio.sleep(0))
    turns.track(done)
    await done

    await asyncio.wait_for(turns.wait(timeout_s=60), timeout=1)
