"""The thread window cache: each thread's recent turns and next seq, kept in Redis.

A turn reads its history from here instead of MongoDB; MongoDB stays the truth and
refills the cache on a miss. Only the holder of a thread's turn lock reads or writes
these keys, so the cache changes in the same order as the messages do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from serve_app.stores.messages import MessageStore
from serve_app.stores.redis_client import redis_errors, thread_key

logger = logging.getLogger(__name__)

WindowEntry = dict[str, Any]  # {"seq", "role", "content", "tokens"}


@dataclass(slots=True)
class ThreadWindow:
    next_seq: int
    turns: list[list[WindowEntry]] = field(default_factory=list)


class WindowCache:
    def __init__(
        self, redis: Redis, messages: MessageStore, max_turns: int, ttl_s: int = 6 * 3600
    ) -> None:
        self._redis = redis
        self._messages = messages
        self._max_turns = max_turns
        self._ttl_s = ttl_s

    async def load(self, thread_id: str) -> ThreadWindow:
        turns_key, seq_key = self._keys(thread_id)
        async with redis_errors("window read"), self._redis.pipeline(transaction=False) as pipe:
            pipe.get(seq_key)
            pipe.lrange(turns_key, 0, -1)
            next_seq, raw_turns = await pipe.execute()

        if next_seq is not None:
            return ThreadWindow(int(next_seq), [orjson.loads(turn) for turn in raw_turns])

        window = await self._load_from_store(thread_id)
        await self._fill(thread_id, window)
        return window

    async def append(self, thread_id: str, turn: list[WindowEntry], next_seq: int) -> None:
        """Record a persisted turn. If Redis fails half-way the cache is dropped rather
        than left stale; the next turn refills it from MongoDB."""
        turns_key, seq_key = self._keys(thread_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.rpush(turns_key, orjson.dumps(turn))
                pipe.ltrim(turns_key, -self._max_turns, -1)
                pipe.set(seq_key, next_seq, ex=self._ttl_s)
                pipe.expire(turns_key, self._ttl_s)
                await pipe.execute()
        except RedisError as exc:
            logger.warning("window cache update for thread %s failed: %r", thread_id, exc)
            try:
                await self._redis.delete(turns_key, seq_key)
            except RedisError:
                # A stale next seq is caught when the next turn writes: MessageStore
                # raises SeqTaken and the engine renumbers from MongoDB.
                logger.warning("window cache for thread %s may be stale", thread_id)

    async def drop(self, thread_id: str) -> None:
        async with redis_errors("window drop"):
            await self._redis.delete(*self._keys(thread_id))

    async def _load_from_store(self, thread_id: str) -> ThreadWindow:
        turns = await self._messages.recent_turns(thread_id, self._max_turns)
        if not turns:
            return ThreadWindow(next_seq=1)
        entries = [[message.window_entry() for message in turn] for turn in turns]
        return ThreadWindow(next_seq=turns[-1][-1].seq + 1, turns=entries)

    async def _fill(self, thread_id: str, window: ThreadWindow) -> None:
        turns_key, seq_key = self._keys(thread_id)
        async with redis_errors("window fill"), self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(turns_key)
            if window.turns:
                pipe.rpush(turns_key, *[orjson.dumps(turn) for turn in window.turns])
                pipe.expire(turns_key, self._ttl_s)
            pipe.set(seq_key, window.next_seq, ex=self._ttl_s)
            await pipe.execute()

    @staticmethod
    def _keys(thread_id: str) -> tuple[str, str]:
        return thread_key(thread_id, "turns"), thread_key(thread_id, "next_seq")
