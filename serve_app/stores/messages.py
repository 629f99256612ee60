"""Messages: every message of every thread, in canonical blocks, numbered by `seq`.

`turn` is the seq of the user message that opened the turn, so a history window can cut
at turn boundaries without reading anything else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from serve_app.errors import Conflict
from serve_app.stores.mongo import mongo_errors

_DUPLICATE_KEY = 11000


class SeqTaken(Conflict):
    """Another message already holds a seq this turn meant to use: the cached next seq
    was stale. The caller renumbers from MongoDB and writes again."""


@dataclass(slots=True)
class StoredMessage:
    id: str
    thread_id: str
    account_id: str
    seq: int
    turn: int
    role: str  # "user" | "assistant"
    content: list[dict[str, Any]]
    tokens: int  # cl100k count of the content, for trimming windows without re-counting
    created_at_ms: int
    request_id: str
    model: str | None = None
    status: str = "complete"  # "complete" | "interrupted"
    stop_reason: str | None = None
    usage: dict[str, int] | None = None
    cost_micros: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        # Built by hand: dataclasses.asdict deep-copies the content, which on the hot path
        # cost more CPU than the MongoDB insert itself.
        doc = {name: getattr(self, name) for name in _STORED_FIELDS}
        doc["_id"] = self.id
        doc.update(self.extra)
        return doc

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> StoredMessage:
        fields = {name: doc[name] for name in _STORED_FIELDS if name in doc}
        extra = {name: value for name, value in doc.items() if name not in _KNOWN_KEYS}
        return cls(id=doc["_id"], extra=extra, **fields)

    def window_entry(self) -> dict[str, Any]:
        """The part of a message that history windows need."""
        return {"seq": self.seq, "role": self.role, "content": self.content, "tokens": self.tokens}


_STORED_FIELDS = tuple(
    name for name in StoredMessage.__dataclass_fields__ if name not in ("id", "extra")
)
_KNOWN_KEYS = frozenset({*_STORED_FIELDS, "_id"})


class MessageStore:
    def __init__(self, collection: AsyncCollection) -> None:
        self._collection = collection

    async def insert(self, messages: list[StoredMessage]) -> None:
        """Write a turn's messages. Writing the same messages again (a retry) succeeds;
        if another message holds one of these seqs, the part of this batch that did land
        is taken back and SeqTaken is raised, so the caller can renumber and write again."""
        ids = [message.id for message in messages]
        async with mongo_errors("message insert"):
            try:
                await self._collection.insert_many(
                    [message.document() for message in messages], ordered=False
                )
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(error.get("code") != _DUPLICATE_KEY for error in errors):
                    raise
                landed = await self._collection.count_documents({"_id": {"$in": ids}})
                if landed == len(ids):
                    return
                await self._collection.delete_many({"_id": {"$in": ids}})
                raise SeqTaken("a message with this seq already exists") from exc

    async def page(
        self, thread_id: str, after_seq: int, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        query = {"thread_id": thread_id, "seq": {"$gt": after_seq}}
        async with mongo_errors("message page"):
            cursor = self._collection.find(query).sort("seq", ASCENDING).limit(limit + 1)
            docs = await cursor.to_list()
        return [StoredMessage.from_document(doc) for doc in docs[:limit]], len(docs) > limit

    async def recent_turns(self, thread_id: str, max_turns: int) -> list[list[StoredMessage]]:
        """The last `max_turns` turns, oldest first, each a list of messages in seq order."""
        turns: dict[int, list[StoredMessage]] = {}
        async with mongo_errors("history read"):
            cursor = self._collection.find({"thread_id": thread_id}).sort("seq", DESCENDING)
            async for doc in cursor:
                message = StoredMessage.from_document(doc)
                if message.turn not in turns and len(turns) == max_turns:
                    break
                turns.setdefault(message.turn, []).insert(0, message)
            await cursor.close()
        return [turns[turn] for turn in sorted(turns)]

    async def last_seq(self, thread_id: str) -> int:
        async with mongo_errors("history read"):
            doc = await self._collection.find_one(
                {"thread_id": thread_id}, sort=[("seq", DESCENDING)], projection={"seq": 1}
            )
        return doc["seq"] if doc else 0

    async def find_by_request(self, thread_id: str, request_id: str) -> list[StoredMessage]:
        async with mongo_errors("message read"):
            cursor = self._collection.find({"thread_id": thread_id, "request_id": request_id})
            docs = await cursor.sort("seq", ASCENDING).to_list()
        return [StoredMessage.from_document(doc) for doc in docs]

    async def delete_thread(self, thread_id: str) -> int:
        async with mongo_errors("message delete"):
            result = await self._collection.delete_many({"thread_id": thread_id})
        return result.deleted_count
