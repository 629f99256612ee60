"""Streamed turns in process: the gateway app under uvicorn on loopback, with the model
router in the same process, real MongoDB (SecantusDB) and Redis, and the sandbox upstream.

These cover what needs settings other than the defaults that `threadgate up` runs with
(`tests/e2e/test_streaming.py` covers those through Ray Serve): cancelling the upstream
when the client leaves, pings during silences, and an upstream that breaks off.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from serve_app.api.app import create_app
from serve_app.canonical import Usage
from serve_app.catalog import Catalog
from serve_app.cli.processes import free_port
from serve_app.clock import now_ms
from serve_app.money import cost_of
from serve_app.router import ModelRouter
from serve_app.sandbox import RunningSandbox, start_sandbox
from serve_app.settings import Settings
from serve_app.stores.accounts import AccountStore
from serve_app.stores.invalidation import InvalidationBus
from serve_app.stores.keys import KeyStore
from serve_app.stores.mongo import MongoStore
from serve_app.stores.redis_client import connect_redis
from serve_app.tokens import count_text
from tests.streams import read_stream, stored_text

PERSIST_DEADLINE_S = 5.0
MODEL = "claude-sonnet-4-6"


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[RunningSandbox]:
    running = await start_sandbox("127.0.0.1", 0)
    yield running
    await running.aclose()


@asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    router = ModelRouter(settings)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, router), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "the gateway did not start"
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield http
    finally:
        server.should_exit = True
        await serving
        await router.aclose()


async def create_master_key(settings: Settings) -> str:
    mongo = MongoStore(settings.mongodb_uri, settings.mongodb_db)
    redis = connect_redis(settings.redis_url)
    try:
        await mongo.ensure_indexes()
        keys = KeyStore(mongo.keys, InvalidationBus(redis), settings.key_cache_ttl_s)
        account = await AccountStore(mongo.accounts, keys).create("streams", now_ms())
        return account.master_secret
    finally:
        await mongo.aclose()
        await redis.aclose()


@pytest.fixture
def gateway(
    mongodb_uri: str, redis_url: str, sandbox: RunningSandbox, request: pytest.FixtureRequest
) -> Callable[..., AbstractAsyncContextManager[Gateway]]:
    """Start a gateway with these settings; each test gets its own database."""

    @asynccontextmanager
    async def start(**fields: Any) -> AsyncIterator[Gateway]:
        settings = Settings(
            _env_file=None,
            mongodb_uri=mongodb_uri,
            redis_url=redis_url,
            mongodb_db=f"stream_{request.node.name[:30]}_{free_port()}",
            sandbox_url=sandbox.url,
            anthropic_api_key=None,
            openai_api_key=None,
            openai_compatible_base_url=None,
            **fields,
        )
        master = await create_master_key(settings)
        async with running_gateway(settings) as http:
            yield await Gateway.open(http, master)

    return start


class Gateway:
    """A running gateway with a capped key and a thread of that key."""

    def __init__(self, http: httpx.AsyncClient, master: str, key: dict, thread: dict) -> None:
        self.http = http
        self.master = master
        self.key = key
        self.thread = thread

    @classmethod
    async def open(cls, http: httpx.AsyncClient, master: str) -> Gateway:
        minted = await http.post(
            "/v1/keys", json={"name": "s", "max_spend_usd": 1}, headers={"x-api-key": master}
        )
        assert minted.status_code == 201, minted.text
        key = minted.json()
        created = await http.post("/v1/threads", json={}, headers={"x-api-key": key["secret"]})
        return cls(http, master, key, created.json())

    def stream(self, content: str, model: str = MODEL) -> AbstractAsyncContextManager:
        body = {"model": model, "max_tokens": 400, "content": content, "stream": True}
        return self.http.stream(
            "POST", self._messages_path, json=body, headers={"x-api-key": self.key["secret"]}
        )

    async def messages(self) -> list[dict]:
        listed = await self.http.get(
            self._messages_path, headers={"x-api-key": self.key["secret"]}, params={"limit": 100}
        )
        return listed.json()["data"]

    async def answer_to(self, content: str, deadline_s: float) -> dict:
        """The stored answer to the user message `content`, once it is there."""
        give_up = time.monotonic() + deadline_s
        while time.monotonic() < give_up:
            messages = await self.messages()
            for asked, answered in itertools.pairwise(messages):
                if asked["content"][0]["text"] == content and answered["role"] == "assistant":
                    return answered
            await asyncio.sleep(0.05)
        raise AssertionError(f"no answer to {content!r} stored within {deadline_s} s")

    async def spent_micros(self) -> int:
        view = await self.http.get(f"/v1/keys/{self.key['id']}", headers={"x-api-key": self.master})
        return view.json()["spent_micros"]

    @property
    def _messages_path(self) -> str:
        return f"/v1/threads/{self.thread['id']}/messages"


def billed_cost(usage: dict[str, int]) -> int:
    spec = Catalog.load(Settings(_env_file=None).models_path).get(MODEL)
    return cost_of(Usage(**usage), spec.prices, 10_700).cost_micros


async def test_cancel_mode_stops_the_upstream_and_bills_what_arrived(gateway):
    content = "cut me short sandbox:tokens=200 sandbox:stream_delay_ms=50"

    async with gateway(stream_disconnect="cancel") as gw:
        async with gw.stream(content) as response:
            read = await read_stream(response, stop_after_first_delta=True)
        answer = await gw.answer_to(content, PERSIST_DEADLINE_S)

        # A 200-token answer at 50 ms an event takes seconds; cancelled, it stops early.
        assert answer["status"] == "interrupted"
        assert answer["stop_reason"] is None
        text = stored_text(answer)
        assert text.startswith(read.text)
        assert count_text(text) < 200
        # Anthropic reports output tokens only at the end: what arrived is counted instead.
        assert answer["usage"]["output_tokens"] == count_text(text)
        assert (
            answer["usage"]["input_tokens"]
            == read.first("message_start")["message"]["usage"]["input_tokens"]
        )
        assert answer["cost_micros"] == billed_cost(answer["usage"]) > 0
        assert await gw.spent_micros() == answer["cost_micros"]

        # The interrupted turn is history for the next one.
        after = await gw.http.post(
            f"/v1/threads/{gw.thread['id']}/messages",
            json={"model": MODEL, "max_tokens": 100, "content": "and now?"},
            headers={"x-api-key": gw.key["secret"]},
        )
        assert "(3 messages in context)" in stored_text(after.json())


async def test_pings_fill_silences_longer_than_the_interval(gateway):
    content = "slow sandbox:tokens=12 sandbox:stream_delay_ms=400"

    async with gateway(stream_ping_interval_s=0.15) as gw:
        async with gw.stream(content) as response:
            read = await read_stream(response)
        answer = await gw.answer_to(content, PERSIST_DEADLINE_S)

    # The sandbox sends one ping right after message_start; the rest are the gateway's.
    assert read.types.count("ping") >= 4
    assert read.types[-1] == "message_stop"
    assert read.text == stored_text(answer)
    assert answer["status"] == "complete"


async def test_upstream_breaking_off_mid_stream_ends_with_an_error_event(gateway):
    content = "break sandbox:tokens=40 sandbox:stream_cut=5"

    async with gateway() as gw:
        async with gw.stream(content) as response:
            read = await read_stream(response)
        answer = await gw.answer_to(content, PERSIST_DEADLINE_S)

    assert response.status_code == 200
    assert read.types[-1] == "error"
    assert "message_stop" not in read.types
    error = read.events[-1]
    assert error["error"]["type"] == "api_error"
    assert re.fullmatch(r"req_[0-9a-f]+", error["request_id"])

    # What arrived before the break is stored, marked, and billed by count.
    assert answer["status"] == "interrupted"
    assert read.text and stored_text(answer) == read.text
    assert answer["usage"]["output_tokens"] == count_text(read.text)
    assert answer["cost_micros"] == billed_cost(answer["usage"])
