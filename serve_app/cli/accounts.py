"""`threadgate accounts create NAME`: a new tenant and its master key, printed as JSON.

The account must land in the MongoDB the gateway reads, or its master key is refused with
401. That MongoDB is, in this order: the one of the stack `threadgate up` runs on the data
dir (its stack.json), MONGODB_URI, or, while that stack is stopped, the data dir's own
database, served just for this command. With none of them the command refuses to run
rather than create an empty database that no gateway reads.
"""

from __future__ import annotations

import asyncio
import json
import os
import unicodedata
from pathlib import Path

from serve_app.cli.processes import ManagedProcess, StartupFailed
from serve_app.cli.stack import (
    MONGODB_DIR,
    STACK_FILE,
    holds_mongodb_data,
    mongo_ready,
    read_stack_file,
    start_mongodb,
)
from serve_app.clock import now_ms
from serve_app.settings import Settings
from serve_app.stores.accounts import AccountStore
from serve_app.stores.keys import KeyStore
from serve_app.stores.mongo import MongoStore

# The same bound as key names at the HTTP edge.
MAX_ACCOUNT_NAME_CHARS = 200
MONGODB_URI_VARIABLES = ("MONGODB_URI", "THREADGATE_MONGODB_URI")
# A rejected name is quoted back, cut to this many characters.
SHOWN_NAME_CHARS = 60


class AccountCommandFailed(Exception):
    """The command could not create the account; the message says why."""

    exit_status = 1


class UsageError(AccountCommandFailed):
    """The command was run wrongly: the message says what to change."""

    exit_status = 2


class StoreUnreachable(AccountCommandFailed):
    """The gateway's MongoDB was found but could not be served or reached."""


def account_name(raw: str) -> str:
    """The account name to store: `raw` without surrounding whitespace, checked."""
    name = raw.strip()
    if not name:
        raise UsageError(f"account name must not be blank, got {_shown(raw)}")
    if len(name) > MAX_ACCOUNT_NAME_CHARS:
        raise UsageError(
            f"account name must be at most {MAX_ACCOUNT_NAME_CHARS} characters, "
            f"got {len(name)}: {_shown(name)}"
        )
    if any(unicodedata.category(char) == "Cc" for char in name):
        raise UsageError(f"account name must not contain control characters, got {_shown(name)}")
    return name


def _shown(value: str) -> str:
    """The value as Python would write it, so invisible characters show; long ones cut."""
    if len(value) > SHOWN_NAME_CHARS:
        return f"{value[:SHOWN_NAME_CHARS]!r}..."
    return repr(value)


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


def create_account(raw_name: str, data_dir: Path) -> dict[str, str]:
    """Create the account in the gateway's MongoDB (see the module docstring for which)."""
    name = account_name(raw_name)
    settings = Settings()

    running = read_stack_file(data_dir)
    if running is not None and mongo_ready(running.mongodb_uri):
        return asyncio.run(_create(running.mongodb_uri, settings.mongodb_db, name))
    if any(os.environ.get(variable) for variable in MONGODB_URI_VARIABLES):
        return asyncio.run(_create(settings.mongodb_uri, settings.mongodb_db, name))
    if not holds_mongodb_data(data_dir):
        raise UsageError(_no_database_message(data_dir, stale_stack_file=running is not None))

    process: ManagedProcess | None = None
    try:
        process, uri = start_mongodb(data_dir, dict(os.environ))
        return asyncio.run(_create(uri, settings.mongodb_db, name))
    except StartupFailed as exc:
        # Most likely `threadgate up` is starting on this data dir and holds the database,
        # but has not written its stack.json yet.
        raise StoreUnreachable(
            f"could not serve the MongoDB data in {data_dir.absolute() / MONGODB_DIR}: {exc}. "
            "If `threadgate up` is starting on this data dir, try again once it prints "
            "'threadgate ready'."
        ) from exc
    finally:
        if process is not None:
            process.stop()


def _no_database_message(data_dir: Path, stale_stack_file: bool) -> str:
    where = data_dir.absolute()
    if not where.is_dir():
        found = f"no data dir at {where}"
    elif stale_stack_file:
        found = (
            f"the stack in {where} is not running (the MongoDB its {STACK_FILE} names does not "
            f"answer) and there is no MongoDB data in {where / MONGODB_DIR}"
        )
    else:
        found = (
            f"no threadgate is running on {where} (no {STACK_FILE}) and there is no MongoDB "
            f"data in {where / MONGODB_DIR}"
        )
    return (
        f"{found}, so the account would go to a new database that the gateway never reads. "
        "Pass --data-dir with the directory `threadgate up` runs on (`make run` passes "
        "DATA_DIR, by default .data in the repository), or set MONGODB_URI to the gateway's "
        "MongoDB."
    )


def print_account(name: str, data_dir: Path) -> None:
    print(json.dumps(create_account(name, data_dir)))
