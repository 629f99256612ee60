"""API keys: minted with a hard spend cap, stored as SHA-256 hashes, shown once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace
from typing import Any, Literal

from pymongo import DESCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

from serve_app.budget import BudgetPeriod
from serve_app.errors import AuthenticationFailed, NotFound
from serve_app.ids import new_id
from serve_app.stores.invalidation import InvalidationBus, TtlCache
from serve_app.stores.mongo import mongo_errors

KeyScope = Literal["standard", "admin"]
SECRET_PREFIX = "tgk_live_"
_SHOWN_PREFIX_CHARS = len(SECRET_PREFIX) + 4


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    account_id: str
    name: str
    scope: KeyScope
    max_spend_micros: int | None
    budget_period: BudgetPeriod
    secret_hint: str  # "tgk_live_AbCd…": enough to recognise a key, useless to use it
    created_at_ms: int
    revoked_at_ms: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> KeyRecord:
        return cls(
            id=doc["_id"],
            account_id=doc["account_id"],
            name=doc["name"],
            scope=doc["scope"],
            max_spend_micros=doc.get("max_spend_micros"),
            budget_period=doc["budget_period"],
            secret_hint=doc["secret_hint"],
            created_at_ms=doc["created_at_ms"],
            revoked_at_ms=doc.get("revoked_at_ms"),
        )


class KeyStore:
    def __init__(
        self, collection: AsyncCollection, bus: InvalidationBus | None, cache_ttl_s: float
    ) -> None:
        self._collection = collection
        self._bus = bus
        self._by_hash: TtlCache[tuple[str, KeyRecord]] = TtlCache(cache_ttl_s)
        if bus is not None:
            bus.subscribe("key", self._forget, on_reset=self._by_hash.clear)

    async def mint(
        self,
        account_id: str,
        name: str,
        scope: KeyScope,
        max_spend_micros: int | None,
        budget_period: BudgetPeriod,
        now_ms: int,
    ) -> tuple[KeyRecord, str]:
        """A new key and its secret; the secret is never stored and never shown again."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(
            id=new_id("key"),
            account_id=account_id,
            name=name,
            scope=scope,
            max_spend_micros=max_spend_micros,
            budget_period=budget_period,
            secret_hint=secret[:_SHOWN_PREFIX_CHARS] + "…",
            created_at_ms=now_ms,
        )
        doc = {
            "_id": record.id,
            "account_id": account_id,
            "name": name,
            "scope": scope,
            "max_spend_micros": max_spend_micros,
            "budget_period": budget_period,
            "secret_hint": record.secret_hint,
            "secret_hash": hash_secret(secret),
            "created_at_ms": now_ms,
            "revoked_at_ms": None,
        }

        async with mongo_errors("key insert"):
            await self._collection.insert_one(doc)
        return record, secret

    async def authenticate(self, secret: str) -> KeyRecord:
        presented_hash = hash_secret(secret)
        cached = self._by_hash.get(presented_hash)
        if cached is None:
            generation = self._by_hash.generation
            async with mongo_errors("key lookup"):
                doc = await self._collection.find_one({"secret_hash": presented_hash})
            if doc is None:
                raise AuthenticationFailed("invalid API key")
            cached = (doc["secret_hash"], KeyRecord.from_document(doc))
            self._by_hash.put(presented_hash, cached, generation)

        stored_hash, record = cached
        # The lookup is by hash already; the explicit constant-time check keeps it honest
        # should the lookup ever become a prefix or range query.
        if not hmac.compare_digest(stored_hash, presented_hash):
            raise AuthenticationFailed("invalid API key")
        if record.revoked_at_ms is not None:
            raise AuthenticationFailed(f"API key {record.id} has been revoked")
        return record

    async def get(self, account_id: str, key_id: str) -> KeyRecord:
        async with mongo_errors("key read"):
            doc = await self._collection.find_one({"_id": key_id, "account_id": account_id})
        if doc is None:
            raise NotFound(f"key {key_id!r} not found")
        return KeyRecord.from_document(doc)

    async def list(
        self, account_id: str, limit: int, after_id: str | None
    ) -> tuple[list[KeyRecord], bool]:
        query: dict[str, Any] = {"account_id": account_id}
        if after_id:
            query["_id"] = {"$lt": after_id}

        async with mongo_errors("key list"):
            cursor = self._collection.find(query).sort("_id", DESCENDING).limit(limit + 1)
            docs = await cursor.to_list()
        records = [KeyRecord.from_document(doc) for doc in docs[:limit]]
        return records, len(docs) > limit

    async def names(self, account_id: str, key_ids: list[str]) -> dict[str, str]:
        if not key_ids:
            return {}
        async with mongo_errors("key names"):
            cursor = self._collection.find(
                {"_id": {"$in": key_ids}, "account_id": account_id}, projection={"name": 1}
            )
            docs = await cursor.to_list()
        return {doc["_id"]: doc["name"] for doc in docs}

    async def update(self, record: KeyRecord, changes: dict[str, Any]) -> KeyRecord:
        """Apply `changes` (name, max_spend_micros, budget_period) to a live key."""
        async with mongo_errors("key update"):
            doc = await self._collection.find_one_and_update(
                {"_id": record.id, "account_id": record.account_id},
                {"$set": changes},
                return_document=ReturnDocument.AFTER,
            )
        if doc is None:
            raise NotFound(f"key {record.id!r} not found")
        await self._announce(record.id)
        return KeyRecord.from_document(doc)

    async def live_admin_count(self, account_id: str) -> int:
        async with mongo_errors("key count"):
            return await self._collection.count_documents(
                {"account_id": account_id, "scope": "admin", "revoked_at_ms": None}
            )

    async def revoke(self, record: KeyRecord, now_ms: int) -> KeyRecord:
        if record.revoked_at_ms is not None:
            return record
        async with mongo_errors("key revoke"):
            await self._collection.update_one(
                {"_id": record.id, "revoked_at_ms": None}, {"$set": {"revoked_at_ms": now_ms}}
            )
        await self._announce(record.id)
        return replace(record, revoked_at_ms=now_ms)

    async def _announce(self, key_id: str) -> None:
        self._forget(key_id)
        if self._bus is not None:
            await self._bus.publish("key", key_id)

    def _forget(self, key_id: str) -> None:
        self._by_hash.drop_where(lambda cached: cached[1].id == key_id)
