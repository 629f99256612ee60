"""Bad input gets its exact status and error type, and changes nothing stored."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import auth, mint_key, new_thread, sandbox_calls, send

TURN = {"model": "claude-sonnet-4-6", "max_tokens": 100, "content": "hi"}


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
