"""How stored records look on the wire."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from serve_app.budget import iso_from_ms
from serve_app.money import micros_to_usd
from serve_app.stores.keys import KeyRecord
from serve_app.stores.messages import StoredMessage
from serve_app.stores.spend import SpendView
from serve_app.stores.threads import ThreadRecord


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def key_view(key: KeyRecord, spend: SpendView | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": key.id,
        "type": "key",
        "name": key.name,
        "scope": key.scope,
        "secret_hint": key.secret_hint,
        "max_spend_usd": (
            None if key.max_spend_micros is None else micros_to_usd(key.max_spend_micros)
        ),
        "max_spend_micros": key.max_spend_micros,
        "budget_period": key.budget_period,
        "created_at": iso_from_ms(key.created_at_ms),
        "revoked": key.revoked_at_ms is not None,
        "revoked_at": iso_from_ms(key.revoked_at_ms),
    }
    if spend is not None:
        view["spent_micros"] = spend.spent_micros
        view["reserved_micros"] = spend.reserved_micros
        view["resets_at"] = iso_from_ms(spend.window.end_ms)
    return view


def thread_view(thread: ThreadRecord) -> dict[str, Any]:
    return {
        "id": thread.id,
        "type": "thread",
        "end_user_id": thread.end_user_id,
        "metadata": thread.metadata,
        "created_at": iso_from_ms(thread.created_at_ms),
    }


def message_view(message: StoredMessage) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": message.id,
        "type": "message",
        "thread_id": message.thread_id,
        "seq": message.seq,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "created_at": iso_from_ms(message.created_at_ms),
    }
    if message.role == "assistant":
        view["model"] = message.model
        view["stop_reason"] = message.stop_reason
        view["usage"] = message.usage
        view["cost_micros"] = message.cost_micros
    if "metadata" in message.extra:
        view["metadata"] = message.extra["metadata"]
    return view


def page_view(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "data": items,
        "has_more": has_more,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
    }
