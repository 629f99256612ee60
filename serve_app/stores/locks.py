"""Per-thread turn locks in Redis: turns on one thread run one after another.

A second send to a busy thread waits for the first turn to finish instead of failing, so
concurrent sends are serialized and never interleave. The holder renews the lock while
its turn runs (a long stream can outlive any fixed TTL); if the holder dies, the lock
expires and the next turn proceeds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from redis.asyncio import Redis
from redis.exceptions import RedisError

from serve_app.errors import Conflict
from serve_app.stores.redis_client import redis_errors, thread_key

logger = logging.getLogger(__name__)

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class TurnLocks:
    def __init__(self, redis: Redis, ttl_s: float, wait_s: float) -> None:
        self._redis = redis
        self._ttl_ms = int(ttl_s * 1000)
        self._wait_s = wait_s
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)

    @asynccontextmanager
    async def hold(self, thread_id: str) -> AsyncIterator[None]:
        name = thread_key(thread_id, "turn_lock")
        token = secrets.token_hex(8)
        await self._acquire(name, token, thread_id)
        renewer = asyncio.create_task(self._keep_alive(name, token))
        try:
            yield
        finally:
            renewer.cancel()
            with suppress(asyncio.CancelledError):
                await renewer
            try:
                await self._release(keys=[name], args=[token])
            except RedisError as exc:
                # The lock expires by itself after its TTL; the next turn only waits longer.
                logger.warning("releasing turn lock of thread %s failed: %r", thread_id, exc)

    async def _acquire(self, name: str, token: str, thread_id: str) -> None:
        deadline = time.monotonic() + self._wait_s
        pause_s = 0.002
        while True:
            async with redis_errors("turn lock"):
                if await self._redis.set(name, token, nx=True, px=self._ttl_ms):
                    return
            if time.monotonic() >= deadline:
                raise Conflict(
                    f"thread {thread_id} is busy with another turn for over "
                    f"{self._wait_s:.0f} s; retry later"
                )
            await asyncio.sleep(pause_s * (0.5 + random.random()))
            pause_s = min(pause_s * 2, 0.05)

    async def _keep_alive(self, name: str, token: str) -> None:
        interval_s = self._ttl_ms / 3000
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self._renew(keys=[name], args=[token, self._ttl_ms])
            except RedisError as exc:
                logger.warning("renewing turn lock %s failed: %r", name, exc)
