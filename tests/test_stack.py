"""The embedded stack: services already configured are used as they are, not started."""

from __future__ import annotations

import os

import httpx
import psutil

from serve_app.cli.stack import LocalStack, mongo_ready, redis_ready


def children() -> set[psutil.Process]:
    # psutil.Process compares by pid and start time: a reused pid is another process.
    return set(psutil.Process(os.getpid()).children(recursive=True))


def commands(processes: set[psutil.Process]) -> set[str]:
    return {os.path.basename(process.cmdline()[0]) for process in processes}


async def test_configured_stores_are_used_and_the_rest_started(tmp_path, mongodb_uri, redis_url):
    before = children()
    stack = LocalStack(tmp_path, {"MONGODB_URI": mongodb_uri, "REDIS_URL": redis_url})

    try:
        endpoints = stack.start()
        started = children() - before

        assert (endpoints.mongodb_uri, endpoints.redis_url) == (mongodb_uri, redis_url)
        assert mongo_ready(endpoints.mongodb_uri) and redis_ready(endpoints.redis_url)
        assert len(started) == 2  # Milvus Lite and the sandbox
        assert not commands(started) & {"secantusd-py", "redis-server"}
        assert not (tmp_path / "mongodb").exists() and not (tmp_path / "redis").exists()
        # Milvus Lite and the sandbox had nothing configured: they were started here.
        assert (tmp_path / "milvus").exists()
        stats = httpx.get(f"{endpoints.sandbox_url}/sandbox/stats")
        assert stats.status_code == 200
    finally:
        stack.stop()

    assert {process for process in started if process.is_running()} == set()
