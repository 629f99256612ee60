"""`threadgate accounts create NAME`: a new tenant and its master key, printed as JSON."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from serve_app.cli.processes import ManagedProcess
from serve_app.cli.stack import mongo_ready, read_stack_file, start_mongodb
from serve_app.clock import now_ms
from serve_app.settings import Settings
from serve_app.stores.accounts import AccountStore
from serve_app.stores.keys import KeyStore
from serve_app.stores.mongo import MongoStore


async def _create(mongodb_uri: str, db_name: str, name: str) -> dict[str, str]:
    mongo = MongoStore(mongodb_uri, db_name)
    try:
        await mongo.ensure_indexes()
        # No invalidation bus: a brand-new key is in nobody's cache yet.
        keys = KeyStore(mongo.keys, bus=None, cache_ttl_s=0)
        account = await AccountStore(mongo.accounts, keys).create(name, now_ms())
    finally:
        await mongo.aclose()
    return {"id": account.id, "name": account.name, "master_key": account.master_secret}


def create_account(name: str, data_dir: Path) -> dict[str, str]:
    """Uses the same MongoDB as `threadgate up`: the running stack's, MONGODB_URI, or the
    data dir's own database, started just for this when nothing is running."""
    settings = Settings()
    running = read_stack_file(data_dir)
    if running is not None and mongo_ready(running.mongodb_uri):
        return asyncio.run(_create(running.mongodb_uri, settings.mongodb_db, name))
    if "MONGODB_URI" in os.environ or "THREADGATE_MONGODB_URI" in os.environ:
        return asyncio.run(_create(settings.mongodb_uri, settings.mongodb_db, name))

    process: ManagedProcess | None = None
    try:
        process, uri = start_mongodb(data_dir, dict(os.environ))
        return asyncio.run(_create(uri, settings.mongodb_db, name))
    finally:
        if process is not None:
            process.stop()


def print_account(name: str, data_dir: Path) -> None:
    print(json.dumps(create_account(name, data_dir)))
