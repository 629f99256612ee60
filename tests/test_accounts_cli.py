"""`threadgate accounts create`: the account lands in the MongoDB the gateway reads, or the
command refuses, with exit status 2 and a message that says what to pass.

The command runs as a user runs it: the installed `threadgate` script, in a directory of
the test's own, with no MONGODB_URI unless the test sets one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from pymongo import MongoClient

from serve_app.cli.stack import LocalStack, StackEndpoints, start_mongodb
from serve_app.stores.keys import hash_secret

THREADGATE = str(Path(sys.executable).parent / "threadgate")
# What the caller's shell might carry that would point the command elsewhere.
LOCATION_VARIABLES = (
    "MONGODB_URI",
    "THREADGATE_MONGODB_URI",
    "THREADGATE_MONGODB_DB",
    "THREADGATE_DATA_DIR",
)


@pytest.fixture
def db_name() -> str:
    """A database of the test's own on the shared SecantusDB server."""
    return f"accounts_cli_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Where the command runs: no .env, no .data, like a fresh shell elsewhere."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


def threadgate(*args: str, cwd: Path, db_name: str, **env: str) -> subprocess.CompletedProcess:
    clean = {name: value for name, value in os.environ.items() if name not in LOCATION_VARIABLES}
    return subprocess.run(
        [THREADGATE, *args],
        cwd=cwd,
        env={**clean, "THREADGATE_MONGODB_DB": db_name, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def created(result: subprocess.CompletedProcess) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def stored_account(mongodb_uri: str, db_name: str, master_key: str) -> tuple[str, str]:
    """The stored account's name and its master key's scope, found by the key's hash."""
    with MongoClient(mongodb_uri) as client:
        key = client[db_name].keys.find_one({"secret_hash": hash_secret(master_key)})
        assert key is not None, "the printed master key is not in this database"
        account = client[db_name].accounts.find_one({"_id": key["account_id"]})
    return account["name"], key["scope"]


def account_names(mongodb_uri: str, db_name: str) -> list[str]:
    with MongoClient(mongodb_uri) as client:
        return [account["name"] for account in client[db_name].accounts.find()]


@pytest.fixture
def stopped_stack_dir(tmp_path: Path) -> Iterator[Path]:
    """A data dir as a stopped `threadgate up` leaves it: MongoDB data, no stack.json."""
    data_dir = tmp_path / "stopped"
    process, _ = start_mongodb(data_dir, dict(os.environ))
    process.stop()
    yield data_dir


def secantusd_serving(storage: Path) -> list[psutil.Process]:
    return [
        process
        for process in psutil.process_iter(["cmdline"])
        if str(storage) in " ".join(process.info["cmdline"] or [])
    ]


def test_the_running_stack_found_by_data_dir_gets_the_account(
    mongodb_uri, db_name, workdir, tmp_path
):
    data_dir = tmp_path / "running"
    data_dir.mkdir()
    LocalStack(data_dir, {}).write_stack_file(
        StackEndpoints(mongodb_uri, "redis://127.0.0.1:1/0", "http://127.0.0.1:1", None)
    )

    result = threadgate(
        "accounts", "create", "acme", "--data-dir", str(data_dir), cwd=workdir, db_name=db_name
    )

    account = created(result)
    assert account["name"] == "acme"
    assert account["master_key"].startswith("tgk_live_")
    assert stored_account(mongodb_uri, db_name, account["master_key"]) == ("acme", "admin")


@pytest.mark.parametrize("variable", ["MONGODB_URI", "THREADGATE_MONGODB_URI"])
def test_mongodb_uri_gets_the_account_without_a_data_dir(mongodb_uri, db_name, workdir, variable):
    result = threadgate(
        "accounts", "create", "acme", cwd=workdir, db_name=db_name, **{variable: mongodb_uri}
    )

    account = created(result)
    assert stored_account(mongodb_uri, db_name, account["master_key"]) == ("acme", "admin")
    assert not (workdir / ".data").exists()


def test_a_stopped_stacks_database_is_served_just_for_the_command(
    stopped_stack_dir, db_name, workdir
):
    storage = stopped_stack_dir / "mongodb"

    result = threadgate(
        "accounts",
        "create",
        "before make run",
        "--data-dir",
        str(stopped_stack_dir),
        cwd=workdir,
        db_name=db_name,
    )

    account = created(result)
    assert secantusd_serving(storage) == []
    process, uri = start_mongodb(stopped_stack_dir, dict(os.environ))
    try:
        assert stored_account(uri, db_name, account["master_key"]) == ("before make run", "admin")
    finally:
        process.stop()


def test_a_database_held_by_a_stack_still_starting_is_a_clear_failure(tmp_path, db_name, workdir):
    # `threadgate up` writes stack.json only once the gateway is ready; until then its
    # MongoDB holds the data dir's files and a second server cannot open them.
    data_dir = tmp_path / "starting"
    process, _ = start_mongodb(data_dir, dict(os.environ))
    try:
        result = threadgate(
            "accounts", "create", "acme", "--data-dir", str(data_dir), cwd=workdir, db_name=db_name
        )
    finally:
        process.stop()

    assert result.returncode == 1
    assert result.stderr.startswith(
        f"threadgate accounts create: could not serve the MongoDB data in {data_dir / 'mongodb'}"
    )
    assert "try again once it prints 'threadgate ready'" in result.stderr


def test_no_stack_and_no_database_in_the_default_data_dir_is_refused(workdir, db_name):
    result = threadgate("accounts", "create", "acme", cwd=workdir, db_name=db_name)

    assert result.returncode == 2
    assert result.stdout == ""
    assert f"no data dir at {workdir / '.data'}," in result.stderr
    assert "Pass --data-dir" in result.stderr and "set MONGODB_URI" in result.stderr
    # Nothing was invented in its place.
    assert not (workdir / ".data").exists()


def test_a_data_dir_without_mongodb_data_is_refused(workdir, db_name, tmp_path):
    data_dir = tmp_path / "empty"
    (data_dir / "logs").mkdir(parents=True)

    result = threadgate(
        "accounts", "create", "acme", "--data-dir", str(data_dir), cwd=workdir, db_name=db_name
    )

    assert result.returncode == 2
    assert f"no threadgate is running on {data_dir} (no stack.json)" in result.stderr
    assert f"no MongoDB data in {data_dir / 'mongodb'}" in result.stderr
    assert sorted(path.name for path in data_dir.iterdir()) == ["logs"]


def test_a_stale_stack_file_without_mongodb_data_is_refused(workdir, db_name, tmp_path):
    # `threadgate up` ran on an external MongoDB that is gone now.
    data_dir = tmp_path / "stale"
    data_dir.mkdir()
    LocalStack(data_dir, {}).write_stack_file(
        StackEndpoints(
            "mongodb://127.0.0.1:1/?directConnection=true",
            "redis://127.0.0.1:1/0",
            "http://127.0.0.1:1",
            None,
        )
    )

    result = threadgate(
        "accounts", "create", "acme", "--data-dir", str(data_dir), cwd=workdir, db_name=db_name
    )

    assert result.returncode == 2
    assert f"the stack in {data_dir} is not running" in result.stderr
    assert "mongodb://" not in result.stderr  # a URI may carry credentials


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("", "account name must not be blank, got ''"),
        ("  \t ", "account name must not be blank, got '  \\t '"),
        ("a" * 201, f"account name must be at most 200 characters, got 201: '{'a' * 60}'..."),
        ("two\nlines", "account name must not contain control characters, got 'two\\nlines'"),
        ("bell\x07", "account name must not contain control characters, got 'bell\\x07'"),
        ("del\x7fete", "account name must not contain control characters, got 'del\\x7fete'"),
        ("nel\x85nel", "account name must not contain control characters, got 'nel\\x85nel'"),
    ],
    ids=["empty", "blank", "too-long", "newline", "bell", "delete", "next-line"],
)
def test_a_bad_name_is_refused_and_nothing_is_written(mongodb_uri, db_name, workdir, name, shown):
    result = threadgate(
        "accounts", "create", name, cwd=workdir, db_name=db_name, MONGODB_URI=mongodb_uri
    )

    assert result.returncode == 2
    assert result.stderr == f"threadgate accounts create: {shown}\n"
    assert account_names(mongodb_uri, db_name) == []


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("  padded  ", "padded"),
        ("a" * 200, "a" * 200),
        ("Ünïcødé café ☕", "Ünïcødé café ☕"),
    ],
    ids=["padded", "200-chars", "unicode"],
)
def test_a_good_name_is_stored_without_surrounding_spaces(
    mongodb_uri, db_name, workdir, name, stored
):
    result = threadgate(
        "accounts", "create", name, cwd=workdir, db_name=db_name, MONGODB_URI=mongodb_uri
    )

    account = created(result)
    assert account["name"] == stored
    assert account_names(mongodb_uri, db_name) == [stored]
