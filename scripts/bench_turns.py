"""Benchmark turns: the gateway next to the sandbox upstream called directly.

    python scripts/bench_turns.py                 # starts its own `threadgate up`
    python scripts/bench_turns.py --data-dir .data  # uses the stack `make run` started
    python scripts/bench_turns.py --only streams  # one of the two parts

Non-streamed turns: p50/p99 latency and turns per second at concurrency 1, 8 and 32, for
both paths, and the gateway's overhead. Streamed turns: time to the first text delta and
to the end of the stream, and streams per second, at concurrency 1 and 32, for both paths,
and the first-token overhead. Figures on shared machines are noisy: compare medians and
ratios from the same run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from serve_app.cli.stack import read_stack_file

MODEL = "claude-haiku-4-5"
TURNS_PER_THREAD = 20  # a worker starts a new conversation after this many turns
QUESTION = "How is the weather today?"
# A streamed answer of 60 tokens: about 20 text deltas from the sandbox.
STREAMED_QUESTION = "How is the weather today? sandbox:tokens=60"
# Piped to a file, rich would fold the tables to 80 columns.
console = Console(width=None if sys.stdout.isatty() else 120)


@dataclass
class RunResult:
    latencies_ms: list[float]
    elapsed_s: float
    first_token_ms: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# One request; a streamed one returns when its first text delta arrived (ms from the start).
Call = Callable[[aiohttp.ClientSession, int], Awaitable[float | None]]


async def run_load(
    session: aiohttp.ClientSession, call: Call, concurrency: int, total: int, label: str
) -> RunResult:
    latencies: list[float] = []
    first_tokens: list[float] = []
    remaining = iter(range(total))

    with Progress(
        TextColumn(f"{label:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)

        async def worker(worker_id: int) -> None:
            for _ in remaining:
                started = time.perf_counter()
                first_token_ms = await call(session, worker_id)
                latencies.append((time.perf_counter() - started) * 1000)
                if first_token_ms is not None:
                    first_tokens.append(first_token_ms)
                progress.advance(task)

        started = time.perf_counter()
        await asyncio.gather(*[worker(i) for i in range(concurrency)])
        elapsed = time.perf_counter() - started
    return RunResult(latencies, elapsed, first_tokens)


async def read_stream(response: aiohttp.ClientResponse, started: float) -> float:
    """Read an SSE response to its end; ms from `started` to its first text delta."""
    if response.status != 200:
        raise RuntimeError(f"stream failed: {response.status} {await response.text()}")
    first_token_ms = None
    async for line in response.content:
        if first_token_ms is None and b'"text_delta"' in line:
            first_token_ms = (time.perf_counter() - started) * 1000
    if first_token_ms is None:
        raise RuntimeError("the stream ended without a text delta")
    return first_token_ms


class GatewayClient:
    def __init__(self, url: str, master_key: str) -> None:
        self.url = url
        self._master_key = master_key
        self._secret = ""
        self._threads: dict[int, tuple[str, int]] = {}

    async def prepare(self, session: aiohttp.ClientSession) -> None:
        async with session.post(
            f"{self.url}/v1/keys",
            json={"name": "bench", "scope": "standard"},
            headers={"x-api-key": self._master_key},
        ) as response:
            self._secret = (await response.json())["secret"]

    async def _thread_for(self, session: aiohttp.ClientSession, worker_id: int) -> str:
        thread_id, used = self._threads.get(worker_id, ("", TURNS_PER_THREAD))
        if used >= TURNS_PER_THREAD:
            async with session.post(
                f"{self.url}/v1/threads",
                json={"end_user_id": f"bench-{worker_id}"},
                headers={"x-api-key": self._secret},
            ) as response:
                thread_id, used = (await response.json())["id"], 0
        self._threads[worker_id] = (thread_id, used + 1)
        return thread_id

    async def turn(self, session: aiohttp.ClientSession, worker_id: int) -> None:
        thread_id = await self._thread_for(session, worker_id)
        body = {"model": MODEL, "max_tokens": 64, "content": QUESTION}
        async with session.post(
            f"{self.url}/v1/threads/{thread_id}/messages",
            json=body,
            headers={"x-api-key": self._secret},
        ) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"turn failed: {response.status} {await response.text()}")

    async def streamed_turn(self, session: aiohttp.ClientSession, worker_id: int) -> float:
        thread_id = await self._thread_for(session, worker_id)
        body = {"model": MODEL, "max_tokens": 64, "content": STREAMED_QUESTION, "stream": True}
        started = time.perf_counter()
        async with session.post(
            f"{self.url}/v1/threads/{thread_id}/messages",
            json=body,
            headers={"x-api-key": self._secret},
        ) as response:
            return await read_stream(response, started)


def sandbox_call(sandbox_url: str, *, stream: bool = False) -> Call:
    question = STREAMED_QUESTION if stream else QUESTION
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": question}],
        "stream": stream,
    }

    async def call(session: aiohttp.ClientSession, _worker_id: int) -> float | None:
        started = time.perf_counter()
        async with session.post(
            f"{sandbox_url}/v1/messages", json=body, headers={"x-api-key": "sandbox"}
        ) as response:
            if stream:
                return await read_stream(response, started)
            await response.read()
            return None

    return call


def start_stack(stack: ExitStack, port: int) -> Path:
    data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tg-bench-")))
    log = (data_dir / "up.log").open("wb")
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
    )
    stack.callback(process.wait, 60)
    stack.callback(process.terminate)
    with console.status("starting threadgate up ..."):
        deadline = time.monotonic() + 240
        while "threadgate ready at" not in (data_dir / "up.log").read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"threadgate up failed; log in {data_dir / 'up.log'}")
            time.sleep(0.5)
    return data_dir


def create_master_key(data_dir: Path) -> str:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "threadgate"),
            "accounts",
            "create",
            "bench",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)["master_key"]


Results = dict[tuple[str, int], RunResult]


async def bench(
    gateway_url: str, sandbox_url: str, master_key: str, turns: int, parts: list[str]
) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        gateway = GatewayClient(gateway_url, master_key)
        await gateway.prepare(session)
        await run_load(session, gateway.turn, 8, 200, "warm-up")

        if "turns" in parts:
            calls = {"sandbox": sandbox_call(sandbox_url), "gateway": gateway.turn}
            report_turns(await compare(session, calls, (1, 8, 32), turns))
        if "streams" in parts:
            calls = {
                "sandbox": sandbox_call(sandbox_url, stream=True),
                "gateway": gateway.streamed_turn,
            }
            report_streams(await compare(session, calls, (1, 32), turns))


async def compare(
    session: aiohttp.ClientSession,
    calls: dict[str, Call],
    concurrencies: tuple[int, ...],
    turns: int,
) -> Results:
    """Each path at each concurrency, one after the other, so they share the machine's mood."""
    results: Results = {}
    for concurrency in concurrencies:
        count = turns if concurrency == 1 else turns * 2
        for path, call in calls.items():
            label = f"{path}, concurrency {concurrency}"
            results[path, concurrency] = await run_load(session, call, concurrency, count, label)
    return results


def report_turns(results: Results) -> None:
    table = Table(title=f"non-streamed turns ({MODEL}, max_tokens 64)")
    for column in ("path", "concurrency", "turns", "p50 ms", "p99 ms", "turns/s"):
        table.add_column(column, justify="right")
    for (path, concurrency), result in sorted(results.items(), key=lambda item: item[0][1]):
        table.add_row(
            path,
            str(concurrency),
            str(len(result.latencies_ms)),
            f"{result.percentile(0.5):.2f}",
            f"{result.percentile(0.99):.2f}",
            f"{result.per_second:.0f}",
        )
    console.print(table)

    gateway, sandbox = results["gateway", 1], results["sandbox", 1]
    overhead_ms = statistics.median(gateway.latencies_ms) - statistics.median(sandbox.latencies_ms)
    console.print(f"gateway overhead at concurrency 1: p50 {overhead_ms:.2f} ms")
    console.print(f"gateway turns/s at concurrency 32: {results['gateway', 32].per_second:.0f}")


def report_streams(results: Results) -> None:
    table = Table(title=f"streamed turns ({MODEL}, 60-token answers)")
    columns = (
        "path",
        "concurrency",
        "streams",
        "first token p50 ms",
        "first token p99 ms",
        "whole stream p50 ms",
        "streams/s",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for (path, concurrency), result in sorted(results.items(), key=lambda item: item[0][1]):
        first = RunResult(result.first_token_ms, result.elapsed_s)
        table.add_row(
            path,
            str(concurrency),
            str(len(result.latencies_ms)),
            f"{first.percentile(0.5):.2f}",
            f"{first.percentile(0.99):.2f}",
            f"{result.percentile(0.5):.2f}",
            f"{result.per_second:.0f}",
        )
    console.print(table)

    gateway, sandbox = results["gateway", 1], results["sandbox", 1]
    overhead_ms = statistics.median(gateway.first_token_ms) - statistics.median(
        sandbox.first_token_ms
    )
    console.print(f"gateway first-token overhead at concurrency 1: p50 {overhead_ms:.2f} ms")
    console.print(f"gateway streams/s at concurrency 32: {results['gateway', 32].per_second:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, help="a running stack's data dir")
    parser.add_argument("--port", type=int, default=8790, help="port for a stack started here")
    parser.add_argument("--turns", type=int, default=400, help="turns per run at concurrency 1")
    parser.add_argument("--only", choices=("turns", "streams"), help="run one part (default: both)")
    args = parser.parse_args()

    with ExitStack() as stack:
        data_dir = args.data_dir or start_stack(stack, args.port)
        endpoints = read_stack_file(data_dir)
        if endpoints is None or not endpoints.gateway_url or not endpoints.sandbox_url:
            raise SystemExit(f"no running stack with a sandbox in {data_dir}")
        master_key = create_master_key(data_dir)
        parts = [args.only] if args.only else ["turns", "streams"]
        asyncio.run(
            bench(endpoints.gateway_url, endpoints.sandbox_url, master_key, args.turns, parts)
        )


if __name__ == "__main__":
    main()
