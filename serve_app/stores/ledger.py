"""The usage ledger: one MongoDB document per settled model call, the truth for billing."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from serve_app.stores.mongo import mongo_errors


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    call_id: str  # "{request_id}:{call_index}": a retried write lands on the same document
    account_id: str
    key_id: str
    end_user_id: str | None
    thread_id: str
    model: str
    upstream: str
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    upstream_cost_micros: int
    cost_micros: int
    created_at_ms: int

    def document(self) -> dict:
        doc = {name: getattr(self, name) for name in self.__dataclass_fields__}
        doc["_id"] = doc.pop("call_id")
        return doc


@dataclass(slots=True)
class UsageRow:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    upstream_cost_micros: int = 0
    cost_micros: int = 0

    def add(self, other: UsageRow) -> None:
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.upstream_cost_micros += other.upstream_cost_micros
        self.cost_micros += other.cost_micros


@dataclass(frozen=True, slots=True)
class UsageGroup:
    key_id: str
    model: str
    end_user_id: str | None
    totals: UsageRow


class Ledger:
    def __init__(self, collection: AsyncCollection) -> None:
        self._collection = collection

    async def record(self, entry: LedgerEntry) -> None:
        async with mongo_errors("ledger insert"):
            # A duplicate is the same call, recorded by an earlier attempt of this request.
            with suppress(DuplicateKeyError):
                await self._collection.insert_one(entry.document())

    async def spent_micros(self, key_id: str, start_ms: int, end_ms: int | None) -> int:
        window: dict = {"$gte": start_ms}
        if end_ms is not None:
            window["$lt"] = end_ms
        pipeline = [
            {"$match": {"key_id": key_id, "created_at_ms": window}},
            {"$group": {"_id": None, "spent": {"$sum": "$cost_micros"}}},
        ]

        async with mongo_errors("ledger sum"):
            cursor = await self._collection.aggregate(pipeline)
            rows = await cursor.to_list()
        return int(rows[0]["spent"]) if rows else 0

    async def rollup(self, account_id: str, from_ms: int, to_ms: int) -> list[UsageGroup]:
        """Totals per (key, model, end user) in [from_ms, to_ms); callers fold further."""
        pipeline = [
            {
                "$match": {
                    "account_id": account_id,
                    "created_at_ms": {"$gte": from_ms, "$lt": to_ms},
                }
            },
            {
                "$group": {
                    "_id": {"key_id": "$key_id", "model": "$model", "end_user_id": "$end_user_id"},
                    "requests": {"$sum": 1},
                    "input_tokens": {"$sum": "$input_tokens"},
                    "output_tokens": {"$sum": "$output_tokens"},
                    "upstream_cost_micros": {"$sum": "$upstream_cost_micros"},
                    "cost_micros": {"$sum": "$cost_micros"},
                }
            },
        ]

        async with mongo_errors("ledger rollup"):
            cursor = await self._collection.aggregate(pipeline)
            rows = await cursor.to_list()

        groups = []
        for row in rows:
            group = row.pop("_id")
            groups.append(
                UsageGroup(
                    key_id=group["key_id"],
                    model=group["model"],
                    end_user_id=group.get("end_user_id"),
                    totals=UsageRow(**{name: int(value) for name, value in row.items()}),
                )
            )
        return groups
