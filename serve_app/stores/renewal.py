"""Leases kept alive while a piece of work runs: a thread's turn lock, a call's reservation.

The renewing loop is stopped by an event as well as by cancelling its task. Cancelling
alone is not enough: a cancel that lands while a store client is timing out a call of its
own can come back as that client's timeout error (seen with redis-py while Redis was
paused), the loop takes it for a failed renewal and sleeps again, and whoever awaits the
loop's end waits forever, holding the thread's lock with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

from redis.exceptions import RedisError

from serve_app.errors import StoreUnavailable

logger = logging.getLogger(__name__)


@asynccontextmanager
async def renewed(
    renew: Callable[[], Awaitable[None]], interval_s: float, lease: str
) -> AsyncIterator[None]:
    """Call `renew` every `interval_s` while the body runs; a failed renewal is logged and
    tried again at the next interval, since the lease outlives a few missed ones."""
    stopped = asyncio.Event()

    async def keep_renewing() -> None:
        while not stopped.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), interval_s)
                return
            try:
                await renew()
            except (StoreUnavailable, RedisError) as exc:
                logger.warning("renewing %s failed (%r); trying again", lease, exc)

    renewer = asyncio.create_task(keep_renewing())
    try:
        yield
    finally:
        stopped.set()
        renewer.cancel()
        with suppress(asyncio.CancelledError):
            await renewer
