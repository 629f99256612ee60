"""`threadgate up` as an operator lives with it: stopped by SIGTERM with nothing left
running and no turn in flight lost, restarted on the same data dir with nothing lost, and
failing closed, with clean 5xx answers, when a store goes away under it.

Each test runs a stack of its own: they stop and break theirs, not the session's.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from tests.e2e.conftest import RunningStack, auth, create_account, mint_key, new_thread
from tests.streams import ReadStream, stored_text

# About 100 events 50 ms apart: still streaming when the SIGTERM arrives, done well
# within the Gateway's graceful_shutdown_timeout_s (configs/serve.yaml).
SLOW_STREAM = "sandbox:tokens=300 sandbox:stream_delay_ms=50 tell me a long story"


@dataclass(frozen=True)
class StackProcess:
    process: psutil.Process
    name: str
    cmdline: tuple[str, ...]


def process_tree(root_pid: int) -> list[StackProcess]:
    """`threadgate up` and everything it started, Ray's workers and HAProxy included."""
    root = psutil.Process(root_pid)
    return [
        StackProcess(process, process.name(), tuple(process.cmdline()))
        for process in [root, *root.children(recursive=True)]
    ]


def still_running(processes: list[StackProcess]) -> list[str]:
    # is_running() compares the start time too, so a reused pid does not count.
    return [
        f"{entry.process.pid} {entry.name}"
        for entry in processes
        if entry.process.is_running() and entry.process.status() != psutil.STATUS_ZOMBIE
    ]


def find_child(processes: list[StackProcess], command_word: str) -> psutil.Process:
    for entry in processes:
        if any(command_word in part for part in entry.cmdline):
            return entry.process
    raise AssertionError(f"no process of the stack runs {command_word}")


@asynccontextmanager
async def own_stack(data_dir: Path) -> AsyncIterator[tuple[RunningStack, httpx.AsyncClient]]:
    running = RunningStack(data_dir)
    stack = running.start()
    try:
        # The port stays the same across restarts, so one client serves them all.
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as http:
            yield running, http
    finally:
        if running.process.poll() is None:
            running.stop()


async def one_turn(http: httpx.AsyncClient, secret: str, thread_id: str, content: str) -> dict:
    response = await http.post(
        f"/v1/threads/{thread_id}/messages",
        json={"model": "claude-haiku-4-5", "max_tokens": 64, "content": content},
        headers=auth(secret),
    )
    assert response.status_code == 200, response.text
    return response.json()


async def stream_while_stopping(
    http: httpx.AsyncClient, running: RunningStack, secret: str, thread_id: str
) -> tuple[ReadStream, int]:
    """A slow streamed turn, with SIGTERM sent once its first text has arrived.

    The stream is read to its end while the stack stops; returns what the client read
    and `threadgate up`'s exit status.
    """
    read = ReadStream()
    stopping: asyncio.Task[int] | None = None
    body = {"model": "claude-haiku-4-5", "max_tokens": 512, "content": SLOW_STREAM, "stream": True}
    try:
        async with http.stream(
            "POST", f"/v1/threads/{thread_id}/messages", json=body, headers=auth(secret)
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                read.events.append(json.loads(line[len("data:") :]))
                if stopping is None and read.text:
                    stopping = asyncio.create_task(asyncio.to_thread(running.stop))
    finally:
        # Even when the stream breaks, the stop runs its course before the test goes on.
        exit_status = await stopping if stopping is not None else None
    assert exit_status is not None, read.types
    return read, exit_status


async def leave_after_the_first_text(http: httpx.AsyncClient, secret: str, thread_id: str) -> None:
    """Start a slow streamed turn and hang up once its first text has arrived."""
    body = {"model": "claude-haiku-4-5", "max_tokens": 512, "content": SLOW_STREAM, "stream": True}
    async with http.stream(
        "POST", f"/v1/threads/{thread_id}/messages", json=body, headers=auth(secret)
    ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data:") and '"text_delta"' in line:
                return


async def test_sigterm_stops_everything_and_a_restart_keeps_the_data(tmp_path):
    async with own_stack(tmp_path / "data") as (running, http):
        master_key = create_account(running.stack, "lifecycle")
        key = await mint_key(http, master_key, max_spend_usd=1.0)
        thread = await new_thread(http, key["secret"])
        first = await one_turn(http, key["secret"], thread["id"], "remember this")

        processes = process_tree(running.process.pid)
        names = {entry.name for entry in processes}
        assert {"redis-server", "raylet", "haproxy"} <= names, names
        # A turn whose client has left goes on without it; the stop waits for it too.
        left_thread = await new_thread(http, key["secret"])
        await leave_after_the_first_text(http, key["secret"], left_thread["id"])
        # Stopping drains: the turn in flight runs to its end, stored and billed, and
        # its client still gets the whole answer.
        streamed, exit_status = await stream_while_stopping(
            http, running, key["secret"], thread["id"]
        )
        assert exit_status == 0
        assert still_running(processes) == []
        assert streamed.types[-1] == "message_stop", streamed.types[-3:]

        running.start()
        listed = await http.get(f"/v1/threads/{thread['id']}/messages", headers=auth(key["secret"]))
        view = await http.get(f"/v1/keys/{key['id']}", headers=auth(master_key))
        usage = await http.get(
            "/v1/usage",
            params={"from_ms": 0, "to_ms": int(time.time() * 1000) + 1},
            headers=auth(master_key),
        )
        second = await one_turn(http, key["secret"], thread["id"], "still there?")
        left = await http.get(
            f"/v1/threads/{left_thread['id']}/messages", headers=auth(key["secret"])
        )

        messages = listed.json()["data"]
        assert [m["seq"] for m in messages] == [1, 2, 3, 4]
        assert messages[1]["content"] == first["content"]
        answer = messages[3]
        assert (answer["role"], answer["status"]) == ("assistant", "complete")
        assert stored_text(answer) == streamed.text != ""
        streamed_cost_micros = streamed.first("message_stop")["cost_micros"]
        assert streamed_cost_micros > 0
        left_answer = left.json()["data"][1]
        assert (left_answer["status"], left_answer["cost_micros"] > 0) == ("complete", True)
        billed_micros = first["cost_micros"] + streamed_cost_micros + left_answer["cost_micros"]
        assert view.json()["spent_micros"] == billed_micros
        [by_key] = [row for row in usage.json()["by_key"] if row["key_id"] == key["id"]]
        assert (by_key["requests"], by_key["cost_micros"]) == (3, billed_micros)
        assert second["content"][0]["text"].endswith("(5 messages in context)")


async def test_a_store_going_away_gets_a_clean_503_with_the_request_id(tmp_path):
    async with own_stack(tmp_path / "data") as (running, http):
        master_key = create_account(running.stack, "outage")
        key = await mint_key(http, master_key, max_spend_usd=1.0)
        thread = await new_thread(http, key["secret"])
        await one_turn(http, key["secret"], thread["id"], "before the outage")
        processes = process_tree(running.process.pid)
        thread_path = f"/v1/threads/{thread['id']}"

        # Redis holds the spend counters and turn locks: without it no turn is admitted.
        find_child(processes, "redis-server").kill()
        refused = await http.post(
            f"{thread_path}/messages",
            json={"model": "claude-haiku-4-5", "max_tokens": 64, "content": "in the outage"},
            headers=auth(key["secret"]),
        )
        health = await http.get("/healthz")
        listed = await http.get(f"{thread_path}/messages", headers=auth(key["secret"]))

        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "api_error"
        assert refused.json()["request_id"] == refused.headers["request-id"]
        assert "Traceback" not in refused.text
        assert health.status_code == 503
        assert health.json()["checks"]["redis"]["ok"] is False
        texts = [m["content"][0]["text"] for m in listed.json()["data"]]
        assert len(texts) == 2 and texts[0] == "before the outage"

        # MongoDB holds threads and messages: reads fail closed too.
        find_child(processes, "secantusd-py").kill()
        unreadable = await http.get(thread_path, headers=auth(key["secret"]))

        assert unreadable.status_code == 503
        assert unreadable.json()["error"]["type"] == "api_error"
        assert unreadable.json()["request_id"] == unreadable.headers["request-id"]
        assert running.stop() == 0
        assert still_running(processes) == []
