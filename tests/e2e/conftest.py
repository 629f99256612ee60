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


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("stack")
    log_path = data_dir / "threadgate-up.log"
    port = free_port()
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("MONGODB_URI", "REDIS_URL", "MILVUS_URI") and not name.endswith("_API_KEY")
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "threadgate"),
                "up",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        endpoints = _wait_until_ready(process, data_dir, log_path)
        yield Stack(
            gateway_url=endpoints.gateway_url,
            sandbox_url=endpoints.sandbox_url,
            redis_url=endpoints.redis_url,
            mongodb_uri=endpoints.mongodb_uri,
            data_dir=data_dir,
            log_path=log_path,
        )
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_until_ready(process: subprocess.Popen, data_dir: Path, log_path: Path):
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"threadgate up exited early:\n{log_path.read_text()[-4000:]}")
        if "threadgate ready at" in log_path.read_text(errors="replace"):
            endpoints = read_stack_file(data_dir)
            assert endpoints is not None
            return endpoints
        time.sleep(0.5)
    raise RuntimeError(f"threadgate up not ready:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def master_key(stack: Stack) -> str:
    result = run_cli("accounts", "create", "e2e", "--data-dir", str(stack.data_dir))
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
