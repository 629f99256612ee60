"""The embedded stack: every service `threadgate up` runs under one data directory.

A service whose location is already configured (MONGODB_URI, REDIS_URL, MILVUS_URI, or a
provider API key for every provider) is used as it is and not started here.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import redis
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from serve_app.cli.processes import ManagedProcess, free_port, port_open
from serve_app.settings import Settings

logger = logging.getLogger(__name__)

STACK_FILE = "stack.json"
MONGODB_DIR = "mongodb"  # under the data dir: the embedded MongoDB's files
LOOPBACK = "127.0.0.1"


@dataclass
class StackEndpoints:
    mongodb_uri: str
    redis_url: str
    milvus_uri: str
    sandbox_url: str | None
    gateway_url: str | None = None

    def environment(self) -> dict[str, str]:
        """What the gateway's processes (Ray workers included) need to find the stores."""
        env = {
            "MONGODB_URI": self.mongodb_uri,
            "REDIS_URL": self.redis_url,
            "MILVUS_URI": self.milvus_uri,
        }
        if self.sandbox_url:
            env["THREADGATE_SANDBOX_URL"] = self.sandbox_url
        return env


def read_stack_file(data_dir: Path) -> StackEndpoints | None:
    path = data_dir / STACK_FILE
    if not path.exists():
        return None
    return StackEndpoints(**json.loads(path.read_text()))


def holds_mongodb_data(data_dir: Path) -> bool:
    """Whether the embedded MongoDB has created its database in this data dir.

    SecantusDB stores through WiredTiger, which writes its `WiredTiger` version file when
    it creates a database: an empty or half-made directory has none.
    """
    return (data_dir / MONGODB_DIR / "WiredTiger").is_file()


def mongo_ready(uri: str) -> bool:
    try:
        with MongoClient(uri, serverSelectionTimeoutMS=300) as client:
            client.admin.command("ping")
        return True
    except PyMongoError:
        return False


def redis_ready(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.3) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def http_ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def start_mongodb(data_dir: Path, env: dict[str, str]) -> tuple[ManagedProcess, str]:
    # Standalone: no oplog, so inserts stay fast as data grows (see DESIGN.md).
    port = free_port()
    process = ManagedProcess(
        "mongodb (secantusd-py)",
        [
            _venv_script("secantusd-py"),
            "--standalone",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--storage-path",
            str(data_dir / MONGODB_DIR),
            "--log-level",
            "WARNING",
        ],
        data_dir / "logs" / "mongodb.log",
        env,
    )
    process.start()
    uri = f"mongodb://{LOOPBACK}:{port}/?directConnection=true"
    process.wait_ready(lambda: mongo_ready(uri), timeout_s=60)
    return process, uri


class LocalStack:
    def __init__(self, data_dir: Path, settings_env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self._env = settings_env
        self._processes: list[ManagedProcess] = []

    def start(self) -> StackEndpoints:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        child_env = {**os.environ, "HF_HUB_OFFLINE": "1"}

        mongodb_uri = self._configured("MONGODB_URI")
        if mongodb_uri:
            logger.info("MongoDB: using MONGODB_URI")
        else:
            process, mongodb_uri = start_mongodb(self.data_dir, child_env)
            self._processes.append(process)

        redis_url = self._configured("REDIS_URL")
        if redis_url:
            logger.info("Redis: using REDIS_URL")
        else:
            redis_url = self._start_redis(child_env)

        milvus_uri = self._configured("MILVUS_URI")
        if milvus_uri:
            logger.info("Milvus: using MILVUS_URI")
        else:
            milvus_uri = self._start_milvus(child_env)

        sandbox_url = None
        if self._needs_sandbox():
            sandbox_url = self._start_sandbox(child_env)

        return StackEndpoints(mongodb_uri, redis_url, milvus_uri, sandbox_url)

    def _configured(self, name: str) -> str | None:
        """A store location the operator set, under either name Settings reads for it
        (`MONGODB_URI` first, then `THREADGATE_MONGODB_URI`), so `threadgate up` and
        `threadgate accounts create` agree on which store is meant."""
        return self._env.get(name) or self._env.get(f"THREADGATE_{name}")

    def write_stack_file(self, endpoints: StackEndpoints) -> None:
        path = self.data_dir / STACK_FILE
        path.write_text(json.dumps({**asdict(endpoints)}, indent=2))

    def stop(self) -> None:
        (self.data_dir / STACK_FILE).unlink(missing_ok=True)
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()

    def _start_redis(self, env: dict[str, str]) -> str:
        port = free_port()
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        process = ManagedProcess(
            "redis-server",
            [
                "redis-server",
                "--bind",
                LOOPBACK,
                "--port",
                str(port),
                "--dir",
                str(redis_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--protected-mode",
                "yes",
            ],
            self.data_dir / "logs" / "redis.log",
            env,
        )
        process.start()
        self._processes.append(process)
        url = f"redis://{LOOPBACK}:{port}/0"
        process.wait_ready(lambda: redis_ready(url), timeout_s=30)
        return url

    def _start_milvus(self, env: dict[str, str]) -> str:
        port = free_port()
        process = ManagedProcess(
            "milvus-lite",
            [
                sys.executable,
                "-m",
                "milvus_lite",
                "server",
                "--data-dir",
                str(self.data_dir / "milvus"),
                "--host",
                LOOPBACK,
                "--port",
                str(port),
            ],
            self.data_dir / "logs" / "milvus.log",
            env,
        )
        process.start()
        self._processes.append(process)
        process.wait_ready(lambda: port_open(LOOPBACK, port), timeout_s=60)
        return f"http://{LOOPBACK}:{port}"

    def _needs_sandbox(self) -> bool:
        settings = Settings()
        return (
            settings.anthropic_api_key is None
            or settings.openai_api_key is None
            or settings.openai_compatible_base_url is None
        )

    def _start_sandbox(self, env: dict[str, str]) -> str:
        port = free_port()
        process = ManagedProcess(
            "sandbox upstream",
            [sys.executable, "-m", "serve_app.sandbox", "--host", LOOPBACK, "--port", str(port)],
            self.data_dir / "logs" / "sandbox.log",
            env,
        )
        process.start()
        self._processes.append(process)
        url = f"http://{LOOPBACK}:{port}"
        process.wait_ready(lambda: http_ready(f"{url}/sandbox/stats"), timeout_s=30)
        return url


def _venv_script(name: str) -> str:
    """A console script installed beside this interpreter (the venv's bin/)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name
