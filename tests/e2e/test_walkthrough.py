"""The README walk-through over plain HTTP: key, thread, two turns, usage rollup."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from tests.e2e.conftest import auth, mint_key, new_thread, send

# configs/models.yaml, claude-sonnet-4-6: USD per million tokens.
SONNET_INPUT_USD, SONNET_OUTPUT_USD = Decimal("3.00"), Decimal("15.00")


def expected_cost_micros(usage: dict) -> int:
    upstream_micros = usage["input_tokens"] * SONNET_INPUT_USD + (
        usage["output_tokens"] * SONNET_OUTPUT_USD
    )
    return int((upstream_micros * Decimal("1.07")).quantize(Decimal(1), ROUND_HALF_UP))


async def test_two_turns_then_usage_to_the_micro_dollar(http, master_key):
    key = await mint_key(http, master_key, name="end_user_42", max_spend_usd=5.0)
    thread = await new_thread(http, key["secret"], end_user_id="user-42")

    first = await send(http, key["secret"], thread["id"], "Hello, who are you?")
    second = await send(http, key["secret"], thread["id"], "And what did I just ask?")

    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    assert first.headers["x-threadgate-upstream"] == "sandbox"
    assert "(1 messages in context)" in first.json()["content"][0]["text"]
    assert "(3 messages in context)" in second.json()["content"][0]["text"]
    assert (first.json()["seq"], second.json()["seq"]) == (2, 4)

    usages = [first.json()["usage"], second.json()["usage"]]
    costs = [expected_cost_micros(usage) for usage in usages]
    assert [first.json()["cost_micros"], second.json()["cost_micros"]] == costs

    rollup = await http.get("/v1/usage", headers=auth(master_key))
    assert rollup.status_code == 200, rollup.text
    row = next(row for row in rollup.json()["by_key"] if row["key_id"] == key["id"])
    assert row == {
        "key_id": key["id"],
        "name": "end_user_42",
        "requests": 2,
        "input_tokens": sum(usage["input_tokens"] for usage in usages),
        "output_tokens": sum(usage["output_tokens"] for usage in usages),
        "upstream_cost_micros": sum(
            usage["input_tokens"] * 3 + usage["output_tokens"] * 15 for usage in usages
        ),
        "cost_micros": sum(costs),
    }
    end_user = next(r for r in rollup.json()["by_end_user"] if r["end_user_id"] == "user-42")
    assert end_user["cost_micros"] == sum(costs)


async def test_history_is_kept_and_listed_in_order(http, master_key):
    key = await mint_key(http, master_key)
    thread = await new_thread(http, key["secret"])
    await send(http, key["secret"], thread["id"], "first question")
    await send(http, key["secret"], thread["id"], "second question")

    listed = await http.get(f"/v1/threads/{thread['id']}/messages", headers=auth(key["secret"]))

    messages = listed.json()["data"]
    assert [(m["seq"], m["role"]) for m in messages] == [
        (1, "user"),
        (2, "assistant"),
        (3, "user"),
        (4, "assistant"),
    ]
    assert messages[0]["content"] == [{"type": "text", "text": "first question"}]
    assert messages[3]["content"][0]["text"].endswith("(3 messages in context)")

    page = await http.get(
        f"/v1/threads/{thread['id']}/messages",
        params={"after_seq": 2, "limit": 1},
        headers=auth(key["secret"]),
    )
    assert [m["seq"] for m in page.json()["data"]] == [3]
    assert page.json()["has_more"] is True


async def test_switching_models_between_turns_keeps_the_history(http, master_key):
    key = await mint_key(http, master_key)
    thread = await new_thread(http, key["secret"])

    answers = []
    for model in ("claude-haiku-4-5", "gpt-5.4", "claude-sonnet-4-6"):
        response = await send(http, key["secret"], thread["id"], f"hi {model}", model=model)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == model
        answers.append(response.json()["content"][0]["text"])

    assert answers[0].endswith("(1 messages in context)")
    assert answers[1].endswith("(3 messages in context)")
    assert answers[2].endswith("(5 messages in context)")
