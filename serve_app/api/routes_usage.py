"""GET /v1/usage: the ledger rolled up by key, model and end user, for billing."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from serve_app.api.auth import admin_key, services_of
from serve_app.api.json_route import JsonRoute
from serve_app.api.schemas import INT64_MAX
from serve_app.api.views import json_response
from serve_app.budget import window_at
from serve_app.clock import now_ms
from serve_app.errors import InvalidRequest
from serve_app.stores.keys import KeyRecord
from serve_app.stores.ledger import UsageRow

router = APIRouter(prefix="/v1/usage", route_class=JsonRoute)


def _row(totals: UsageRow, **labels: Any) -> dict[str, Any]:
    return {
        **labels,
        "requests": totals.requests,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "upstream_cost_micros": totals.upstream_cost_micros,
        "cost_micros": totals.cost_micros,
    }


@router.get("")
async def usage(
    caller: Annotated[KeyRecord, Depends(admin_key)],
    request: Request,
    from_ms: Annotated[int | None, Query(ge=0, le=INT64_MAX)] = None,
    to_ms: Annotated[int | None, Query(ge=0, le=INT64_MAX)] = None,
) -> Response:
    now = now_ms()
    start_ms = window_at("month", now).start_ms if from_ms is None else from_ms
    end_ms = now + 1 if to_ms is None else to_ms
    if start_ms >= end_ms:
        raise InvalidRequest(f"from_ms must be before to_ms, got from_ms={start_ms} to_ms={end_ms}")

    services = services_of(request)
    groups = await services.ledger.rollup(caller.account_id, start_ms, end_ms)

    by_key: dict[str, UsageRow] = defaultdict(UsageRow)
    by_model: dict[str, UsageRow] = defaultdict(UsageRow)
    by_end_user: dict[str | None, UsageRow] = defaultdict(UsageRow)
    total = UsageRow()
    for group in groups:
        by_key[group.key_id].add(group.totals)
        by_model[group.model].add(group.totals)
        by_end_user[group.end_user_id].add(group.totals)
        total.add(group.totals)

    names = await services.keys.names(caller.account_id, list(by_key))
    return json_response(
        {
            "from_ms": start_ms,
            "to_ms": end_ms,
            "by_key": [
                _row(row, key_id=key_id, name=names.get(key_id)) for key_id, row in by_key.items()
            ],
            "by_model": [_row(row, model=model) for model, row in by_model.items()],
            "by_end_user": [
                _row(row, end_user_id=end_user) for end_user, row in by_end_user.items()
            ],
            "total": _row(total),
        }
    )
