"""Redis: spend counters and reservations, turn locks, idempotency records, caches.

Every key that a Lua script touches together shares one hash tag (`{k:...}` for a key's
spend, `{t:...}` for a thread), so the scripts also run on Redis Cluster.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.exceptions import RedisError

from serve_app.errors import StoreUnavailable

logger = logging.getLogger(__name__)


def connect_redis(url: str) -> Redis:
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=10,
        health_check_interval=30,
        max_connections=512,
    )


@asynccontextmanager
async def redis_errors(operation: str) -> AsyncIterator[None]:
    """Map client failures to StoreUnavailable: without Redis the gateway fails closed."""
    try:
        yield
    except RedisError as exc:
        logger.error("redis %s failed: %r", operation, exc)
        raise StoreUnavailable("the spend and lock store is unavailable; retry shortly") from exc


def spend_keys(key_id: str) -> list[str]:
    tag = f"{{k:{key_id}}}"
    return [f"tg:{tag}:spend", f"tg:{tag}:reservations"]


def thread_key(thread_id: str, suffix: str) -> str:
    return f"tg:{{t:{thread_id}}}:{suffix}"
