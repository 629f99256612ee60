"""The whole gateway, started the way a user starts it: `threadgate up`.

One stack per test session (Ray Serve takes seconds to start). Tests stay independent by
minting their own keys and threads; the account is created with `threadgate accounts
create`, as the README says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from serve_app.cli.processes import free_port
from serve_app.cli.stack import read_stack_file
from tests.conftest import run_cli

STARTUP_TIMEOUT_S = 240


@dataclass(frozen=True)
class Stack:
    gateway_url: str
    sandbox_url: str
    redis_url: str
    mongodb_uri: str
    data_dir: Path
    log_path: Path


class RunningStack:
    """A `threadgate up` process of a test's own, and the endpoints it printed."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / "threadgate-up.log"
        self._port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.stack: Stack | None = None

    def start(self) -> Stack:
        env = {
            name: value
            for name, value in os.environ.items()
            if name not in ("MONGODB_URI", "REDIS_URL", "MILVUS_URI")
            and not name.endswith("_API_KEY")
        }
        ready_lines_before = _ready_lines(self.log_path)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "threadgate"),
                    "up",
                    "--port",
                    str(self._port),
                    "--data-dir",
                    str(self.data_dir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        endpoints = _wait_until_ready(self.process, self.log_path, ready_lines_before)
        self.stack = Stack(
            gateway_url=endpoints.gateway_url,
            sandbox_url=endpoints.sandbox_url,
            redis_url=endpoints.redis_url,
            mongodb_uri=endpoints.mongodb_uri,
            data_dir=self.data_dir,
            log_path=self.log_path,
        )
        return self.stack

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, as Ctrl-C or a service manager would send; the exit status."""
        assert self.process is not None
        self.process.terminate()
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = RunningStack(tmp_path_factory.mktemp("stack"))
    try:
        yield running.start()
    finally:
        if running.process is not None and running.process.poll() is None:
            running.stop()


READY_LINE = "threadgate ready at"


def _ready_lines(log_path: Path) -> int:
    if not log_path.exists():
        return 0
    return log_path.read_text(errors="replace").count(READY_LINE)


def _wait_until_ready(process: subprocess.Popen, log_path: Path, ready_lines_before: int):
    """Wait for this run's ready line (the log is appended to across restarts)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"threadgate up exited early:\n{log_path.read_text()[-4000:]}")
        if _ready_lines(log_path) > ready_lines_before:
            endpoints = read_stack_file(log_path.parent)
            assert endpoints is not None
            return endpoints
        time.sleep(0.5)
    raise RuntimeError(f"threadgate up not ready:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def master_key(stack: Stack) -> str:
    return create_account(stack, "e2e")


def create_account(stack: Stack, name: str) -> str:
    """`threadgate accounts create NAME`, as the README says; the master key it printed."""
    result = run_cli("accounts", "create", name, "--data-dir", str(stack.data_dir))
    assert result.returncode == 0, result.stderr
    account = json.loads(result.stdout)
    assert account["master_key"].startswith("tgk_live_")
    return account["master_key"]


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, timeout=60, limits=httpx.Limits(max_connections=200)
    ) as client:
        yield client


def auth(secret: str) -> dict[str, str]:
    return {"x-api-key": secret}


async def mint_key(http: httpx.AsyncClient, master_key: str, **fields) -> dict:
    body = {"name": "test key", "scope": "standard", **fields}
    response = await http.post("/v1/keys", json=body, headers=auth(master_key))
    assert response.status_code == 201, response.text
    return response.json()


async def new_thread(http: httpx.AsyncClient, secret: str, end_user_id: str = "u1") -> dict:
    response = await http.post(
        "/v1/threads", json={"end_user_id": end_user_id}, headers=auth(secret)
    )
    assert response.status_code == 201, response.text
    return response.json()


async def send(
    http: httpx.AsyncClient, secret: str, thread_id: str, content, **fields
) -> httpx.Response:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 256, "content": content, **fields}
    return await http.post(f"/v1/threads/{thread_id}/messages", json=body, headers=auth(secret))


async def sandbox_calls(stack: Stack) -> int:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{stack.sandbox_url}/sandbox/stats")
    return response.json()["calls"]
