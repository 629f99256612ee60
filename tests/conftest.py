"""Real services for the tests: SecantusDB (MongoDB wire protocol) and redis-server on
loopback, each in a temporary directory, started once per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from serve_app.cli.processes import ManagedProcess, free_port
from serve_app.cli.stack import mongo_ready, redis_ready
from serve_app.stores.mongo import MongoStore


@pytest.fixture(scope="session")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("mongodb")
    port = free_port()
    process = ManagedProcess(
        "secantusd-py",
        [
            str(Path(sys.executable).parent / "secantusd-py"),
            "--standalone",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            str(data_dir / "db"),
            "--log-level",
            "WARNING",
        ],
        data_dir / "mongodb.log",
        env=dict(os.environ),
    )
    process.start()
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    process.wait_ready(lambda: mongo_ready(uri), timeout_s=60)
    yield uri
    process.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert shutil.which("redis-server"), "redis-server is missing: run `make test`"
    data_dir = tmp_path_factory.mktemp("redis")
    port = free_port()
    process = ManagedProcess(
        "redis-server",
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(data_dir),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        data_dir / "redis.log",
        env=dict(os.environ),
    )
    process.start()
    url = f"redis://127.0.0.1:{port}/0"
    process.wait_ready(lambda: redis_ready(url), timeout_s=30)
    yield url
    process.stop()


@pytest.fixture
async def mongo(mongodb_uri: str, request: pytest.FixtureRequest) -> AsyncIterator[MongoStore]:
    """A fresh database per test, so tests never see each other's documents."""
    store = MongoStore(mongodb_uri, f"test_{request.node.name[:40]}_{free_port()}")
    await store.ensure_indexes()
    yield store
    await store.aclose()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "threadgate"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
