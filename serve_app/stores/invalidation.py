"""Cross-replica cache invalidation over Redis pub/sub.

Key records and thread ownership are read on every request, so each Gateway replica
keeps them in process. MongoDB stays the truth: a change (revocation, new cap, thread
deletion) is written there first, then announced here, and every replica drops its copy.
A replica that loses its subscription clears its whole cache before listening again,
since it may have missed announcements while it was away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from serve_app.stores.redis_client import redis_errors

logger = logging.getLogger(__name__)

CHANNEL = "tg:invalidate"
Value = TypeVar("Value")


class TtlCache(Generic[Value]):
    """A small in-process cache; entries live `ttl_s` at most, as a backstop.

    A read from the store that raced with an invalidation must not put the stale value
    back: callers take `generation` before reading and pass it to `put`, which ignores
    the value if anything was dropped in between.
    """

    def __init__(self, ttl_s: float, max_entries: int = 100_000) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, Value]] = {}
        self.generation = 0

    def get(self, name: str) -> Value | None:
        entry = self._entries.get(name)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at < time.monotonic():
            del self._entries[name]
            return None
        return value

    def put(self, name: str, value: Value, generation: int) -> None:
        if generation != self.generation:
            return
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        self._entries[name] = (time.monotonic() + self._ttl_s, value)

    def drop(self, name: str) -> None:
        self.generation += 1
        self._entries.pop(name, None)

    def drop_where(self, predicate: Callable[[Value], bool]) -> None:
        self.generation += 1
        for name in [name for name, (_, value) in self._entries.items() if predicate(value)]:
            del self._entries[name]

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()


class InvalidationBus:
    """Publishes `kind:id` messages and dispatches received ones to subscribers."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._handlers: dict[str, Callable[[str], None]] = {}
        self._on_reset: list[Callable[[], None]] = []
        self._task: asyncio.Task | None = None

    def subscribe(self, kind: str, handler: Callable[[str], None], on_reset: Callable[[], None]):
        self._handlers[kind] = handler
        self._on_reset.append(on_reset)

    async def publish(self, kind: str, object_id: str) -> None:
        # Local caches are dropped by the caller directly; this reaches the other replicas.
        async with redis_errors("publish invalidation"):
            await self._redis.publish(CHANNEL, f"{kind}:{object_id}")

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="invalidation-listener")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _listen(self) -> None:
        backoff_s = 0.1
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self._reset()
                    backoff_s = 0.1
                    async for message in pubsub.listen():
                        self._dispatch(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                logger.warning("invalidation subscription lost (%r); retrying", exc)
                self._reset()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)

    def _dispatch(self, data: str) -> None:
        kind, _, object_id = data.partition(":")
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(object_id)

    def _reset(self) -> None:
        for reset in self._on_reset:
            reset()
