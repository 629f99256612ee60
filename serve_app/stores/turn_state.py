"""Per-thread turn state in Redis: the turn lock and the window cache, in one hash slot.

Turns on one thread run one after another: a second send waits for the first turn to
finish instead of failing, so concurrent sends never interleave. The holder renews the
lock while its turn runs (a long stream can outlive any fixed TTL); if the holder dies,
the lock expires and the next turn proceeds.

The window cache holds each thread's recent turns and next seq, so a turn reads no
MongoDB on the hot path. MongoDB stays the truth and refills the cache on a miss. Only
the lock holder reads or writes the cache, and taking the lock returns the cache in the
same round trip; committing a turn appends it and releases the lock in one more.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from serve_app.errors import Conflict
from serve_app.stores.messages import MessageStore
from serve_app.stores.redis_client import redis_errors, thread_key
from serve_app.stores.renewal import renewed

logger = logging.getLogger(__name__)

WindowEntry = dict[str, Any]  # {"seq", "role", "content", "tokens"}

# KEYS: lock, next_seq, turns, open; ARGV: token, lock_ttl_ms, cache_ttl_s
# -> {0} if another turn holds the lock, else {1, next_seq or false, turns...}
# `open` names the holder until it commits or releases. Finding it set means the last
# holder vanished mid-turn (its lock expired): its turn may be in MongoDB and not in the
# cache, so the cache is dropped and refilled from MongoDB.
_OPEN = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0}
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('DEL', KEYS[2], KEYS[3])
end
redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[3])
local result = {1, redis.call('GET', KEYS[2])}
for _, turn in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  table.insert(result, turn)
end
return result
"""

# KEYS: lock, next_seq, turns, open; ARGV: token, next_seq, cache_ttl_s, max_turns, turn (JSON)
# A holder whose lock expired must not touch the cache: the turn that took over owns it.
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[4])
redis.call('RPUSH', KEYS[3], ARGV[5])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[4]), -1)
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: lock, open; ARGV: token. A turn that stored nothing leaves the cache as it was.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1], KEYS[2])
end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


@dataclass(slots=True)
class ThreadWindow:
    next_seq: int
    turns: list[list[WindowEntry]] = field(default_factory=list)


@dataclass(slots=True)
class HeldTurn:
    """A thread whose turn lock this request holds, with its cached window."""

    thread_id: str
    token: str
    window: ThreadWindow
    committed: bool = False


class TurnState:
    def __init__(
        self,
        redis: Redis,
        messages: MessageStore,
        max_turns: int,
        lock_ttl_s: float,
        lock_wait_s: float,
        cache_ttl_s: int = 6 * 3600,
    ) -> None:
        self._redis = redis
        self._messages = messages
        self._max_turns = max_turns
        self._lock_ttl_ms = int(lock_ttl_s * 1000)
        self._lock_wait_s = lock_wait_s
        self._cache_ttl_s = cache_ttl_s
        self._open = redis.register_script(_OPEN)
        self._commit = redis.register_script(_COMMIT)
        self._release = redis.register_script(_RELEASE)
        self._renew = redis.register_script(_RENEW)

    @asynccontextmanager
    async def turn(self, thread_id: str) -> AsyncIterator[HeldTurn]:
        """Hold the thread's turn lock; `commit` the turn before leaving, or it is dropped."""
        keys = self._keys(thread_id)
        token = secrets.token_hex(8)
        opened = await self._acquire(keys, token, thread_id)

        next_seq, raw_turns = opened[1], opened[2:]
        if next_seq is None:
            window = await self._refill(thread_id)
        else:
            window = ThreadWindow(int(next_seq), [orjson.loads(turn) for turn in raw_turns])

        held = HeldTurn(thread_id, token, window)
        try:
            renew_interval_s = self._lock_ttl_ms / 3000
            async with renewed(
                lambda: self._renew_lock(keys[0], token), renew_interval_s, f"turn lock {keys[0]}"
            ):
                yield held
        finally:
            if not held.committed:
                await self._release_quietly(keys, token, thread_id)

    async def commit(self, held: HeldTurn, turn: list[WindowEntry], next_seq: int) -> None:
        """Append a persisted turn to the cache and release the lock, in one round trip.

        If Redis fails here, the cache is dropped rather than left stale (a stale next seq
        would still be caught: MessageStore raises SeqTaken and the engine renumbers).
        """
        keys = self._keys(held.thread_id)
        args = [held.token, next_seq, self._cache_ttl_s, self._max_turns, orjson.dumps(turn)]
        try:
            if not await self._commit(keys=keys, args=args):
                logger.warning("turn lock of thread %s expired mid-turn", held.thread_id)
                await self._redis.delete(keys[1], keys[2])
        except RedisError as exc:
            logger.warning("committing a turn of thread %s failed: %r", held.thread_id, exc)
            with suppress(RedisError):
                await self._redis.delete(keys[1], keys[2])
            await self._release_quietly(keys, held.token, held.thread_id)
        held.committed = True

    async def forget(self, held: HeldTurn) -> None:
        """Drop the cached window; the next turn refills it from MongoDB."""
        _, seq_key, turns_key, _ = self._keys(held.thread_id)
        async with redis_errors("window drop"):
            await self._redis.delete(seq_key, turns_key)

    async def _acquire(self, keys: list[str], token: str, thread_id: str) -> list[Any]:
        deadline = time.monotonic() + self._lock_wait_s
        pause_s = 0.002
        while True:
            async with redis_errors("turn lock"):
                opened = await self._open(
                    keys=keys, args=[token, self._lock_ttl_ms, self._cache_ttl_s]
                )
            if opened[0] == 1:
                return opened
            if time.monotonic() >= deadline:
                raise Conflict(
                    f"thread {thread_id} is busy with another turn for over "
                    f"{self._lock_wait_s:.0f} s; retry later"
                )
            await asyncio.sleep(pause_s * (0.5 + random.random()))
            pause_s = min(pause_s * 2, 0.05)

    async def _refill(self, thread_id: str) -> ThreadWindow:
        turns = await self._messages.recent_turns(thread_id, self._max_turns)
        if not turns:
            window = ThreadWindow(next_seq=1)
        else:
            entries = [[message.window_entry() for message in turn] for turn in turns]
            window = ThreadWindow(next_seq=turns[-1][-1].seq + 1, turns=entries)

        _, seq_key, turns_key, _ = self._keys(thread_id)
        async with redis_errors("window fill"), self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(turns_key)
            if window.turns:
                pipe.rpush(turns_key, *[orjson.dumps(turn) for turn in window.turns])
                pipe.expire(turns_key, self._cache_ttl_s)
            pipe.set(seq_key, window.next_seq, ex=self._cache_ttl_s)
            await pipe.execute()
        return window

    async def _renew_lock(self, lock_key: str, token: str) -> None:
        await self._renew(keys=[lock_key], args=[token, self._lock_ttl_ms])

    async def _release_quietly(self, keys: list[str], token: str, thread_id: str) -> None:
        try:
            await self._release(keys=[keys[0], keys[3]], args=[token])
        except RedisError as exc:
            # The lock expires by itself after its TTL; the next turn only waits longer.
            logger.warning("releasing turn lock of thread %s failed: %r", thread_id, exc)

    @staticmethod
    def _keys(thread_id: str) -> list[str]:
        return [
            thread_key(thread_id, "turn_lock"),
            thread_key(thread_id, "next_seq"),
            thread_key(thread_id, "turns"),
            thread_key(thread_id, "turn_open"),
        ]
