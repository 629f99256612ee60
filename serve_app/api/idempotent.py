"""`Idempotency-Key` on POSTs: a retried request gets the stored answer, not a second run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson
from fastapi import Request
from starlette.responses import Response

from serve_app.api.auth import services_of
from serve_app.api.views import json_response
from serve_app.clock import now_ms
from serve_app.stores.idempotency import StoredResponse, fingerprint
from serve_app.stores.keys import KeyRecord

logger = logging.getLogger(__name__)

REPLAYED_HEADER = "idempotent-replayed"
_KEPT_HEADERS = ("x-threadgate-upstream",)


async def idempotent(
    request: Request, key: KeyRecord, run: Callable[[], Awaitable[Response]]
) -> Response:
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is None:
        return await run()

    store = services_of(request).idempotency
    request_print = fingerprint(request.method, request.url.path, await request.body())
    stored = await store.claim(key.id, idempotency_key, request_print)
    if stored is not None:
        return json_response(
            stored.body, stored.status, {**stored.headers, REPLAYED_HEADER: "true"}
        )

    try:
        response = await run()
    except BaseException:
        # A failed request gives its key back, so the client's retry runs for real.
        await asyncio.shield(store.release(key.id, idempotency_key))
        raise

    if not 200 <= response.status_code < 300:
        await asyncio.shield(store.release(key.id, idempotency_key))
        return response

    kept = {name: response.headers[name] for name in _KEPT_HEADERS if name in response.headers}
    result = StoredResponse(response.status_code, orjson.loads(response.body), kept)
    await asyncio.shield(store.complete(key.id, idempotency_key, request_print, result, now_ms()))
    return response
