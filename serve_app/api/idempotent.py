"""`Idempotency-Key` on POSTs: a retried request gets the stored answer, not a second run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response

from serve_app.api.auth import services_of
from serve_app.api.views import json_response
from serve_app.clock import now_ms
from serve_app.stores.idempotency import IdempotencyStore, StoredResponse, fingerprint
from serve_app.stores.keys import KeyRecord

REPLAYED_HEADER = "idempotent-replayed"
_KEPT_HEADERS = ("x-threadgate-upstream",)


class IdempotencyClaim:
    """One request's hold on its `Idempotency-Key`: it either ran before (`stored`), or it
    runs now and must end with `complete` or `release`."""

    def __init__(
        self,
        store: IdempotencyStore,
        key_id: str,
        idempotency_key: str,
        request_print: str,
        stored: StoredResponse | None,
    ) -> None:
        self._store = store
        self._key_id = key_id
        self._idempotency_key = idempotency_key
        self._request_print = request_print
        self.stored = stored

    @classmethod
    async def take(cls, request: Request, key: KeyRecord) -> IdempotencyClaim | None:
        """None when the request carries no `Idempotency-Key`."""
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key is None:
            return None

        store = services_of(request).idempotency
        request_print = fingerprint(
            request.method, request.url.path, _canonical(await request.body())
        )
        stored = await store.claim(key.id, idempotency_key, request_print)
        return cls(store, key.id, idempotency_key, request_print, stored)

    async def complete(self, status: int, body: Any, headers: Mapping[str, str]) -> None:
        kept = {name: headers[name] for name in _KEPT_HEADERS if name in headers}
        result = StoredResponse(status, body, kept)
        await asyncio.shield(
            self._store.complete(
                self._key_id, self._idempotency_key, self._request_print, result, now_ms()
            )
        )

    async def release(self) -> None:
        """Give the key back, so the client's retry runs for real."""
        await asyncio.shield(self._store.release(self._key_id, self._idempotency_key))


def _canonical(body: bytes) -> bytes:
    """The same JSON however it was spaced or ordered, so a retry that re-serialized its
    body is still the same request; a body that is not JSON is compared as sent."""
    try:
        return orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        return body


def replayed_headers(stored: StoredResponse) -> dict[str, str]:
    return {**stored.headers, REPLAYED_HEADER: "true"}


async def idempotent(
    request: Request, key: KeyRecord, run: Callable[[], Awaitable[Response]]
) -> Response:
    """Run a request that answers JSON at most once per `Idempotency-Key`."""
    claim = await IdempotencyClaim.take(request, key)
    if claim is None:
        return await run()
    if claim.stored is not None:
        return json_response(claim.stored.body, claim.stored.status, replayed_headers(claim.stored))

    try:
        response = await run()
    except BaseException:
        await claim.release()
        raise

    if not 200 <= response.status_code < 300:
        await claim.release()
        return response
    await claim.complete(response.status_code, orjson.loads(response.body), response.headers)
    return response
