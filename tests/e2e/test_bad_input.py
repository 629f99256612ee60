"""Bad input gets its exact status and error type, and changes nothing stored."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import auth, create_account, mint_key, new_thread, sandbox_calls, send

TURN = {"model": "claude-sonnet-4-6", "max_tokens": 100, "content": "hi"}
PNG_SOURCE = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


def without(field: str) -> dict:
    return {name: value for name, value in TURN.items() if name != field}


BAD_TURNS = [
    (without("model"), 400, "model: field required"),
    (without("max_tokens"), 400, "max_tokens: field required"),
    (without("content"), 400, "content: field required"),
    ({**TURN, "max_tokens": "abc"}, 400, 'max_tokens: Input should be a valid integer, got "abc"'),
    (
        {**TURN, "max_tokens": 0},
        400,
        "max_tokens must be between 1 and 128000 for claude-sonnet-4-6, got 0",
    ),
    (
        {**TURN, "model": "claude-haiku-4-5", "max_tokens": 64001},
        400,
        "max_tokens must be between 1 and 64000 for claude-haiku-4-5, got 64001",
    ),
    ({**TURN, "model": "gpt-9-ultra"}, 400, "model: unknown model 'gpt-9-ultra'"),
    ({**TURN, "content": 42}, 400, "content"),
    ({**TURN, "content": []}, 400, "content"),
    ({**TURN, "content": [{"type": "tool_result", "tool_use_id": "x"}]}, 400, "content"),
    ({**TURN, "temperature": 1.5}, 400, "temperature must be between 0 and 1.0"),
    (
        {**TURN, "messages": [{"role": "user", "content": "hi"}]},
        400,
        "messages: Extra inputs are not permitted",
    ),
    ({**TURN, "content": "  \n "}, 400, "content: must contain non-whitespace text"),
    ({**TURN, "content": [{"type": "text"}]}, 400, "content.0.text: field required"),
    (
        {**TURN, "content": [{"type": "image", "source": PNG_SOURCE | {"data": "!!!"}}]},
        400,
        'content.0.source.data: must be base64-encoded image bytes, got "!!!"',
    ),
    ({**TURN, "system": " "}, 400, "system: must contain non-whitespace text"),
    ({**TURN, "tools": [{"name": "x"}]}, 400, "tools: tool webhooks are not available"),
    # MongoDB could not store these: refused before the upstream is paid for an answer
    # that could never be kept (streamed or not).
    *[
        (
            {**TURN, "stream": stream, "metadata": metadata},
            400,
            message,
        )
        for stream in (False, True)
        for metadata, message in [
            ({"n": 2**63}, "metadata: integer at n does not fit in 64 bits"),
            ({"a\u0000": 1}, "metadata: key 'a\\x00' at the top level may not start with $"),
            ({"x": [{"$set": 1}]}, "metadata: key '$set' at x.0 may not start with $"),
            ({"x": "y" * 20_000}, "metadata: must be at most 16384 bytes as JSON, got 20008"),
        ]
    ],
]


async def snapshot(http, master_key, key, thread, stack) -> tuple:
    messages = await http.get(f"/v1/threads/{thread['id']}/messages", headers=auth(key["secret"]))
    view = await http.get(f"/v1/keys/{key['id']}", headers=auth(master_key))
    spend = (view.json()["spent_micros"], view.json()["reserved_micros"])
    return messages.json()["data"], spend, await sandbox_calls(stack)


@pytest.fixture
async def setting(http, master_key):
    key = await mint_key(http, master_key, max_spend_usd=1.0)
    thread = await new_thread(http, key["secret"])
    first = await send(http, key["secret"], thread["id"], "a stored turn")
    assert first.status_code == 200
    return key, thread


@pytest.mark.parametrize(("body", "status", "message"), BAD_TURNS)
async def test_bad_turns_are_refused_and_change_nothing(
    http, master_key, stack, setting, body, status, message
):
    key, thread = setting
    before = await snapshot(http, master_key, key, thread, stack)

    response = await http.post(
        f"/v1/threads/{thread['id']}/messages", json=body, headers=auth(key["secret"])
    )

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert message in error["message"]
    assert response.json()["request_id"] == response.headers["request-id"]
    assert await snapshot(http, master_key, key, thread, stack) == before


async def test_malformed_json_and_a_missing_content_type(http, setting):
    key, thread = setting
    path = f"/v1/threads/{thread['id']}/messages"

    broken = await http.post(
        path,
        content=b'{"model": ',
        headers={**auth(key["secret"]), "content-type": "application/json"},
    )
    form = await http.post(path, content=b'{"model": "x"}', headers=auth(key["secret"]))

    assert broken.status_code == 400
    assert broken.json()["error"]["message"].startswith("body: not valid JSON")
    assert form.status_code == 400
    assert "Content-Type: application/json" in form.json()["error"]["message"]


@pytest.mark.parametrize(
    "raw",
    [
        # A lone surrogate: no UTF-8 encoder (MongoDB's, the log's) can take it.
        b'{"model": "claude-sonnet-4-6", "max_tokens": 10, "content": "\\ud800"}',
        b'{"model": "claude-sonnet-4-6", "max_tokens": 10, "content": "hi", "temperature": NaN}',
    ],
)
async def test_json_the_stores_cannot_hold_is_not_valid_json(http, master_key, stack, setting, raw):
    key, thread = setting
    before = await snapshot(http, master_key, key, thread, stack)

    response = await http.post(
        f"/v1/threads/{thread['id']}/messages",
        content=raw,
        headers={**auth(key["secret"]), "content-type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("body: not valid JSON")
    assert await snapshot(http, master_key, key, thread, stack) == before


async def test_a_json_body_that_is_not_an_object(http, setting):
    key, thread = setting

    response = await http.post(
        f"/v1/threads/{thread['id']}/messages",
        content=b'"hi"',
        headers={**auth(key["secret"]), "content-type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["message"] == 'body: must be a JSON object, got "hi"'


async def test_an_oversized_body_gets_413_declared_or_streamed(http, setting):
    key, thread = setting
    huge = b'{"model": "claude-sonnet-4-6", "max_tokens": 10, "content": "' + b"x" * (9 << 20)

    async def chunks():
        for start in range(0, len(huge), 1 << 20):
            yield huge[start : start + (1 << 20)]

    path = f"/v1/threads/{thread['id']}/messages"
    headers = {**auth(key["secret"]), "content-type": "application/json"}
    declared = await http.post(path, content=huge, headers=headers)
    streamed = await http.post(path, content=chunks(), headers=headers)

    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json()["error"]["type"] == "request_too_large"


async def test_unknown_and_foreign_threads_are_not_found(http, master_key, setting):
    key, thread = setting
    other = await mint_key(http, master_key)

    unknown = await send(http, key["secret"], "thr_doesnotexist", "hi")
    foreign = await send(http, other["secret"], thread["id"], "hi")
    foreign_read = await http.get(f"/v1/threads/{thread['id']}", headers=auth(other["secret"]))
    admin_read = await http.get(f"/v1/threads/{thread['id']}", headers=auth(master_key))

    for response in (unknown, foreign, foreign_read):
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found_error"
    assert admin_read.status_code == 200


async def test_missing_wrong_and_revoked_keys_get_401(http, master_key, setting):
    key, thread = setting

    missing = await http.get("/v1/threads")
    wrong = await http.get("/v1/threads", headers=auth("tgk_live_not-a-real-key"))
    revoked = await http.delete(f"/v1/keys/{key['id']}", headers=auth(master_key))
    after = await send(http, key["secret"], thread["id"], "hi")
    bearer = await http.get("/v1/threads", headers={"authorization": f"Bearer {key['secret']}"})

    assert revoked.json()["revoked"] is True
    for response in (missing, wrong, after, bearer):
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    assert "revoked" in after.json()["error"]["message"]


async def test_standard_keys_cannot_administer(http, setting):
    key, _ = setting

    mint = await http.post("/v1/keys", json={"name": "x"}, headers=auth(key["secret"]))
    usage = await http.get("/v1/usage", headers=auth(key["secret"]))

    for response in (mint, usage):
        assert response.status_code == 403
        assert response.json()["error"]["type"] == "permission_error"


async def test_bad_key_and_usage_parameters(http, master_key):
    negative_cap = await http.post(
        "/v1/keys", json={"name": "x", "max_spend_usd": -1}, headers=auth(master_key)
    )
    bad_period = await http.post(
        "/v1/keys", json={"name": "x", "budget_period": "week"}, headers=auth(master_key)
    )
    backwards = await http.get(
        "/v1/usage", params={"from_ms": 10, "to_ms": 5}, headers=auth(master_key)
    )

    assert negative_cap.status_code == 400
    assert negative_cap.json()["error"]["message"].startswith("max_spend_usd:")
    assert bad_period.status_code == 400
    assert "budget_period" in bad_period.json()["error"]["message"]
    assert backwards.status_code == 400
    assert backwards.json()["error"]["message"] == (
        "from_ms must be before to_ms, got from_ms=10 to_ms=5"
    )


async def test_bad_keys_threads_and_query_values_get_400_not_500(http, master_key, setting):
    key, thread = setting
    admin = auth(master_key)
    huge = str(10**25)

    cases = {
        "sub-micro cap": await http.post(
            "/v1/keys", json={"name": "x", "max_spend_usd": 1e-7}, headers=admin
        ),
        "null name": await http.patch(f"/v1/keys/{key['id']}", json={"name": None}, headers=admin),
        "thread metadata": await http.post(
            "/v1/threads", json={"metadata": {"n": 2**64 - 1}}, headers=auth(key["secret"])
        ),
        "after_seq": await http.get(
            f"/v1/threads/{thread['id']}/messages",
            params={"after_seq": huge},
            headers=auth(key["secret"]),
        ),
        "to_ms": await http.get("/v1/usage", params={"from_ms": 0, "to_ms": huge}, headers=admin),
    }

    for case, response in cases.items():
        assert response.status_code == 400, (case, response.text)
        assert response.json()["error"]["type"] == "invalid_request_error", case
    assert cases["sub-micro cap"].json()["error"]["message"] == (
        "max_spend_usd: must be a whole number of micro-dollars (at most 6 decimals), got 1e-7"
    )
    assert cases["null name"].json()["error"]["message"].startswith("name: may not be null")


async def test_a_wrong_method_gets_405_with_the_allowed_ones(http, setting):
    key, thread = setting

    response = await http.put(f"/v1/threads/{thread['id']}", headers=auth(key["secret"]))

    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "DELETE"}


async def test_the_last_admin_key_cannot_be_revoked_and_revoked_keys_stay_revoked(http, stack):
    master_key = create_account(stack, "last-admin")
    master_id = (await http.get("/v1/keys", headers=auth(master_key))).json()["data"][0]["id"]
    key = await mint_key(http, master_key)

    last = await http.delete(f"/v1/keys/{master_id}", headers=auth(master_key))
    await http.delete(f"/v1/keys/{key['id']}", headers=auth(master_key))
    change = await http.patch(
        f"/v1/keys/{key['id']}", json={"max_spend_usd": 5}, headers=auth(master_key)
    )
    second_admin = await mint_key(http, master_key, scope="admin")
    handed_over = await http.delete(f"/v1/keys/{master_id}", headers=auth(second_admin["secret"]))

    assert last.status_code == 409
    assert "last admin key" in last.json()["error"]["message"]
    assert change.status_code == 409
    assert "revoked" in change.json()["error"]["message"]
    assert handed_over.status_code == 200 and handed_over.json()["revoked"] is True
