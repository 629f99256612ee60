"""Threads: one per conversation, owned by the key that created it, tagged by end user."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo import DESCENDING
from pymongo.asynchronous.collection import AsyncCollection

from serve_app.errors import NotFound
from serve_app.ids import new_id
from serve_app.stores.invalidation import InvalidationBus, TtlCache
from serve_app.stores.keys import KeyRecord
from serve_app.stores.mongo import mongo_errors


@dataclass(frozen=True, slots=True)
class ThreadRecord:
    id: str
    account_id: str
    key_id: str
    end_user_id: str | None
    metadata: dict[str, Any]
    created_at_ms: int

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> ThreadRecord:
        return cls(
            id=doc["_id"],
            account_id=doc["account_id"],
            key_id=doc["key_id"],
            end_user_id=doc.get("end_user_id"),
            metadata=doc.get("metadata") or {},
            created_at_ms=doc["created_at_ms"],
        )

    def visible_to(self, key: KeyRecord) -> bool:
        """Admin keys see their account; a standard key sees only threads it created."""
        if self.account_id != key.account_id:
            return False
        return key.is_admin or self.key_id == key.id


class ThreadStore:
    def __init__(
        self, collection: AsyncCollection, bus: InvalidationBus | None, cache_ttl_s: float
    ) -> None:
        self._collection = collection
        self._bus = bus
        # Ownership never changes, so only deletion has to reach the other replicas.
        self._cache: TtlCache[ThreadRecord] = TtlCache(cache_ttl_s)
        if bus is not None:
            bus.subscribe("thread", self._cache.drop, on_reset=self._cache.clear)

    async def create(
        self, key: KeyRecord, end_user_id: str | None, metadata: dict[str, Any], now_ms: int
    ) -> ThreadRecord:
        record = ThreadRecord(
            id=new_id("thr"),
            account_id=key.account_id,
            key_id=key.id,
            end_user_id=end_user_id,
            metadata=metadata,
            created_at_ms=now_ms,
        )
        async with mongo_errors("thread insert"):
            await self._collection.insert_one(
                {
                    "_id": record.id,
                    "account_id": record.account_id,
                    "key_id": record.key_id,
                    "end_user_id": end_user_id,
                    "metadata": metadata,
                    "created_at_ms": now_ms,
                }
            )
        return record

    async def get_visible(self, key: KeyRecord, thread_id: str) -> ThreadRecord:
        """The thread if this key may see it; 404 otherwise, so ids of other tenants leak
        nothing (not even their existence)."""
        record = self._cache.get(thread_id)
        if record is None:
            generation = self._cache.generation
            async with mongo_errors("thread read"):
                doc = await self._collection.find_one({"_id": thread_id})
            if doc is not None:
                record = ThreadRecord.from_document(doc)
                self._cache.put(thread_id, record, generation)

        if record is None or not record.visible_to(key):
            raise NotFound(f"thread {thread_id!r} not found")
        return record

    async def list(
        self, key: KeyRecord, end_user_id: str | None, limit: int, after_id: str | None
    ) -> tuple[list[ThreadRecord], bool]:
        query: dict[str, Any] = {"account_id": key.account_id}
        if not key.is_admin:
            query["key_id"] = key.id
        if end_user_id is not None:
            query["end_user_id"] = end_user_id
        if after_id:
            query["_id"] = {"$lt": after_id}

        async with mongo_errors("thread list"):
            cursor = self._collection.find(query).sort("_id", DESCENDING).limit(limit + 1)
            docs = await cursor.to_list()
        return [ThreadRecord.from_document(doc) for doc in docs[:limit]], len(docs) > limit

    async def delete(self, record: ThreadRecord) -> None:
        async with mongo_errors("thread delete"):
            await self._collection.delete_one({"_id": record.id})
        self._cache.drop(record.id)
        if self._bus is not None:
            await self._bus.publish("thread", record.id)
