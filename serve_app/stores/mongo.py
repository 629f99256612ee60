"""MongoDB: the durable truth for accounts, keys, threads, messages and the usage ledger.

Writes are idempotent (documents keyed by request-derived ids), so nothing here needs
multi-document transactions or change streams: SecantusDB in standalone mode serves it
locally, a replica set or Atlas in production.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from serve_app.errors import StoreUnavailable

logger = logging.getLogger(__name__)

INDEXES: dict[str, list[IndexModel]] = {
    "keys": [
        IndexModel([("secret_hash", ASCENDING)], unique=True),
        IndexModel([("account_id", ASCENDING), ("_id", DESCENDING)]),
    ],
    "threads": [
        IndexModel([("account_id", ASCENDING), ("end_user_id", ASCENDING), ("_id", DESCENDING)]),
        IndexModel([("account_id", ASCENDING), ("key_id", ASCENDING), ("_id", DESCENDING)]),
    ],
    "messages": [
        IndexModel([("thread_id", ASCENDING), ("seq", ASCENDING)], unique=True),
    ],
    "ledger": [
        IndexModel([("account_id", ASCENDING), ("created_at_ms", ASCENDING)]),
        IndexModel([("key_id", ASCENDING), ("created_at_ms", ASCENDING)]),
        # The calls in flight, read when spend counters are rebuilt.
        IndexModel([("key_id", ASCENDING), ("state", ASCENDING)]),
    ],
    "idempotency": [
        IndexModel([("created_at_ms", ASCENDING)]),
    ],
}


class MongoStore:
    """One async client per process; collections by name."""

    def __init__(self, uri: str, db_name: str) -> None:
        self.client: AsyncMongoClient = AsyncMongoClient(
            uri,
            serverSelectionTimeoutMS=5_000,
            connectTimeoutMS=5_000,
            # The driver waits forever for a reply by default; a reply that never comes
            # would hold a thread's turn lock as long. This bounds it, far above the
            # slowest query here (a month's usage rollup).
            socketTimeoutMS=30_000,
            tz_aware=True,
        )
        self.db: AsyncDatabase = self.client[db_name]
        self.accounts = self.db["accounts"]
        self.keys = self.db["keys"]
        self.threads = self.db["threads"]
        self.messages = self.db["messages"]
        self.ledger = self.db["ledger"]
        self.idempotency = self.db["idempotency"]

    async def ensure_indexes(self) -> None:
        async with mongo_errors("creating indexes"):
            for name, indexes in INDEXES.items():
                await self.db[name].create_indexes(indexes)

    async def max_wire_version(self) -> int:
        async with mongo_errors("hello"):
            hello = await self.client.admin.command("hello")
        return int(hello.get("maxWireVersion", 0))

    async def ping(self) -> None:
        async with mongo_errors("ping"):
            await self.client.admin.command("ping")

    async def aclose(self) -> None:
        await self.client.close()


@asynccontextmanager
async def mongo_errors(operation: str) -> AsyncIterator[None]:
    """Map driver failures to StoreUnavailable; a duplicate key is the caller's business."""
    try:
        yield
    except DuplicateKeyError:
        raise
    except PyMongoError as exc:
        logger.error("mongodb %s failed: %r", operation, exc)
        raise StoreUnavailable("the message store is unavailable; retry shortly") from exc
