"""Turns that outlive their HTTP request, waited for when a replica stops.

A turn whose client left goes on as a task of its own (invariant 4: what reached the
upstream is stored and billed). Serve's graceful shutdown waits for HTTP requests only,
so without this a replica stopping right after a client left would drop that turn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

# After the wait, interrupted turns get this long to store what they have.
_INTERRUPTED_STORE_S = 5.0


class InFlightTurns:
    def __init__(self) -> None:
        self._interrupts: dict[asyncio.Task, Callable[[], None] | None] = {}

    def track(self, task: asyncio.Task, interrupt: Callable[[], None] | None = None) -> None:
        """Hold `task` until it ends; `interrupt`, if given, cuts it short so that it
        stores what it has (a stream stops reading its upstream)."""
        self._interrupts[task] = interrupt
        task.add_done_callback(self._forget)

    async def wait(self, timeout_s: float) -> None:
        """Let the turns in flight finish; interrupt those still running after
        `timeout_s`, and give them a moment to store what they have."""
        if not self._interrupts:
            return
        logger.info("waiting up to %.0f s for %d turns in flight", timeout_s, len(self._interrupts))
        _, pending = await asyncio.wait(set(self._interrupts), timeout=timeout_s)
        if not pending:
            return

        for task in pending:
            interrupt = self._interrupts.get(task)
            if interrupt is not None:
                interrupt()
        _, lost = await asyncio.wait(pending, timeout=_INTERRUPTED_STORE_S)
        if lost:
            logger.warning("stopping with %d turns still running; they are cut off", len(lost))

    def _forget(self, task: asyncio.Task) -> None:
        self._interrupts.pop(task, None)
