"""Idempotency-Key: a retried POST returns the stored result instead of running again.

The first request with a key claims it in Redis (`pending`); when it succeeds its
response is stored in MongoDB and in Redis, so a retry after a Redis restart, or after
Redis missed the news, still finds it. A request that fails gives the key back, so the
client's retry runs for real.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import orjson
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

from serve_app.errors import Conflict, InvalidRequest, StoreUnavailable
from serve_app.stores.mongo import mongo_errors
from serve_app.stores.redis_client import redis_errors

logger = logging.getLogger(__name__)

MAX_KEY_CHARS = 255
_PENDING_TTL_S = 15 * 60


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(b"\0".join([method.encode(), path.encode(), body])).hexdigest()


class IdempotencyStore:
    def __init__(self, redis: Redis, collection: AsyncCollection, ttl_s: int) -> None:
        self._redis = redis
        self._collection = collection
        self._ttl_s = ttl_s

    async def claim(
        self, key_id: str, idempotency_key: str, request_print: str
    ) -> StoredResponse | None:
        """None if this request may run; the stored response if it already ran."""
        if not idempotency_key or len(idempotency_key) > MAX_KEY_CHARS:
            raise InvalidRequest(
                f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} characters, "
                f"got {len(idempotency_key)}"
            )
        name = self._name(key_id, idempotency_key)
        pending = orjson.dumps({"state": "pending", "fingerprint": request_print})

        async with redis_errors("idempotency claim"):
            claimed = await self._redis.set(name, pending, nx=True, ex=_PENDING_TTL_S)
            existing = None if claimed else await self._redis.get(name)

        if claimed:
            # Redis may have lost the record (restart); MongoDB keeps finished ones.
            record = await self._finished_record(name)
            if record is None:
                return None
            async with redis_errors("idempotency restore"):
                await self._redis.set(name, orjson.dumps(record), ex=self._ttl_s)
        elif existing is None:
            # It expired between SET and GET; claim again from the top.
            return await self.claim(key_id, idempotency_key, request_print)
        else:
            record = orjson.loads(existing)
            if record["state"] == "pending":
                # The first request may have finished and failed to tell Redis.
                record = await self._finished_record(name) or record

        if record["fingerprint"] != request_print:
            raise Conflict(
                f"Idempotency-Key {idempotency_key!r} was already used with a different "
                "request; use a new key for a new request"
            )
        if record["state"] == "pending":
            raise Conflict(
                f"a request with Idempotency-Key {idempotency_key!r} is still in progress; "
                "retry after it finishes"
            )
        return StoredResponse(record["status"], record["body"], record.get("headers", {}))

    async def _finished_record(self, name: str) -> dict[str, Any] | None:
        async with mongo_errors("idempotency read"):
            doc = await self._collection.find_one({"_id": name})
        return None if doc is None else doc["record"]

    async def complete(
        self,
        key_id: str,
        idempotency_key: str,
        request_print: str,
        response: StoredResponse,
        now_ms: int,
    ) -> None:
        name = self._name(key_id, idempotency_key)
        record = {
            "state": "done",
            "fingerprint": request_print,
            "status": response.status,
            "body": response.body,
            "headers": response.headers,
        }

        # The request already succeeded: a store failing now must not turn it into an
        # error. Either copy lets a retry replay it; with neither, the pending claim
        # expires and a retry runs again.
        try:
            async with mongo_errors("idempotency write"):
                with suppress(DuplicateKeyError):
                    await self._collection.insert_one(
                        {"_id": name, "record": record, "created_at_ms": now_ms}
                    )
        except StoreUnavailable:
            logger.warning("idempotency record %s kept in Redis only", name)
        try:
            async with redis_errors("idempotency write"):
                await self._redis.set(name, orjson.dumps(record), ex=self._ttl_s)
        except StoreUnavailable:
            logger.warning("idempotency record %s kept in MongoDB only", name)

    async def release(self, key_id: str, idempotency_key: str) -> None:
        async with redis_errors("idempotency release"):
            await self._redis.delete(self._name(key_id, idempotency_key))

    @staticmethod
    def _name(key_id: str, idempotency_key: str) -> str:
        return f"tg:{{k:{key_id}}}:idem:{idempotency_key}"
