"""GET /healthz: is each store and deployment answering? No key needed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from serve_app.api.auth import services_of
from serve_app.api.json_route import JsonRoute
from serve_app.api.views import json_response
from serve_app.errors import ThreadgateError

router = APIRouter(route_class=JsonRoute)
_CHECK_TIMEOUT_S = 3.0


async def _check(probe: Awaitable[Any]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe, _CHECK_TIMEOUT_S)
    except (TimeoutError, ThreadgateError, OSError) as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


@router.get("/healthz")
async def healthz(request: Request) -> Response:
    services = services_of(request)
    mongodb, redis, model_router = await asyncio.gather(
        _check(services.mongo.ping()),
        _check(services.redis_ping()),
        _check(services.router.ping()),
    )
    checks = {"mongodb": mongodb, "redis": redis, "model_router": model_router}
    healthy = all(check["ok"] for check in checks.values())
    upstreams = {
        provider: services.router.upstream_label(provider)
        for provider in ("anthropic", "openai", "openai_compatible")
    }
    return json_response(
        {"status": "ok" if healthy else "degraded", "checks": checks, "upstreams": upstreams},
        status=200 if healthy else 503,
    )
