"""Accounts: a tenant. Created from the CLI with a master (admin-scope) key."""

from __future__ import annotations

from dataclasses import dataclass

from pymongo.asynchronous.collection import AsyncCollection

from serve_app.ids import new_id
from serve_app.stores.keys import KeyRecord, KeyStore
from serve_app.stores.mongo import mongo_errors


@dataclass(frozen=True, slots=True)
class NewAccount:
    id: str
    name: str
    master_key: KeyRecord
    master_secret: str


class AccountStore:
    def __init__(self, collection: AsyncCollection, keys: KeyStore) -> None:
        self._collection = collection
        self._keys = keys

    async def create(self, name: str, now_ms: int) -> NewAccount:
        account_id = new_id("acct")
        async with mongo_errors("account insert"):
            await self._collection.insert_one(
                {"_id": account_id, "name": name, "created_at_ms": now_ms}
            )

        # The master key has no cap of its own: it administers the account's keys.
        master, secret = await self._keys.mint(account_id, "master", "admin", None, "month", now_ms)
        return NewAccount(account_id, name, master, secret)
