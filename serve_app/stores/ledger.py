"""The usage ledger: one MongoDB document per model call, the truth for billing.

A call's document is written before the call, as a reservation (`state: "reserved"`, the
worst case in `reserved_micros`, an expiry its holder keeps pushing back), and becomes
the call's usage record when it is settled (`state: "settled"`), in one single-document
update. So the ledger also knows every call in flight: when Redis loses the spend
counters, they are rebuilt from it with the open reservations included, and a cap holds
even for the calls that were running at that moment (invariant 3). A call that produced
nothing to bill has its document dropped.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from serve_app.stores.mongo import mongo_errors

RESERVED = "reserved"
SETTLED = "settled"


@dataclass(frozen=True, slots=True)
class Reservation:
    """The worst case of one model call, held against its key's budget until settled."""

    call_id: str  # "{request_id}:{call_index}", the ledger document's id
    account_id: str
    key_id: str
    end_user_id: str | None
    thread_id: str
    model: str
    amount_micros: int


@dataclass(frozen=True, slots=True)
class OpenReservation:
    call_id: str
    amount_micros: int
    expires_at_ms: int


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

    def settled_fields(self) -> dict:
        """What settling writes over the call's reservation document."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        del fields["call_id"]
        fields["state"] = SETTLED
        return fields

    def settle_update(self) -> tuple[dict, dict]:
        """(filter, update) of the settling write; upserted, so it holds even if the
        reservation document is gone (an expired one, swept by an operator)."""
        return {"_id": self.call_id}, {"$set": self.settled_fields()}


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

    async def reserve(self, reservation: Reservation, expires_at_ms: int, now_ms: int) -> None:
        doc = {
            "_id": reservation.call_id,
            "state": RESERVED,
            "account_id": reservation.account_id,
            "key_id": reservation.key_id,
            "end_user_id": reservation.end_user_id,
            "thread_id": reservation.thread_id,
            "model": reservation.model,
            "reserved_micros": reservation.amount_micros,
            "expires_at_ms": expires_at_ms,
            "cost_micros": 0,
            "created_at_ms": now_ms,
        }
        async with mongo_errors("ledger reserve"):
            # A duplicate is this call, reserved by an earlier attempt of this request.
            with suppress(DuplicateKeyError):
                await self._collection.insert_one(doc)

    async def renew(self, call_id: str, expires_at_ms: int) -> None:
        async with mongo_errors("ledger renew"):
            await self._collection.update_one(
                {"_id": call_id, "state": RESERVED}, {"$set": {"expires_at_ms": expires_at_ms}}
            )

    async def drop(self, call_id: str) -> None:
        """Forget a reservation whose call produced nothing to bill."""
        async with mongo_errors("ledger drop"):
            await self._collection.delete_one({"_id": call_id, "state": RESERVED})

    async def record(self, entry: LedgerEntry) -> None:
        """Settle a call; writing it again (a retry) changes nothing."""
        query, update = entry.settle_update()
        async with mongo_errors("ledger settle"):
            await self._collection.update_one(query, update, upsert=True)

    async def open_reservations(self, key_id: str, now_ms: int) -> list[OpenReservation]:
        """The key's calls in flight: reserved, not settled, and not given up on."""
        query = {"key_id": key_id, "state": RESERVED, "expires_at_ms": {"$gt": now_ms}}
        projection = {"reserved_micros": 1, "expires_at_ms": 1}
        async with mongo_errors("ledger open reservations"):
            docs = await self._collection.find(query, projection).to_list()
        return [
            OpenReservation(doc["_id"], int(doc["reserved_micros"]), int(doc["expires_at_ms"]))
            for doc in docs
        ]

    async def spent_micros(self, key_id: str, start_ms: int, end_ms: int | None) -> int:
        window: dict = {"$gte": start_ms}
        if end_ms is not None:
            window["$lt"] = end_ms
        pipeline = [
            {"$match": {"key_id": key_id, "created_at_ms": window, "state": SETTLED}},
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
                    "state": SETTLED,
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
