"""Turn writes against a real MongoDB wire server (SecantusDB), both write paths."""

from __future__ import annotations

import pytest

from serve_app.stores.ledger import Ledger, LedgerEntry
from serve_app.stores.messages import MessageStore, SeqTaken, StoredMessage
from serve_app.stores.turn_writes import TurnWriter


def message(message_id: str, seq: int, text: str = "hi") -> StoredMessage:
    return StoredMessage(
        id=message_id,
        thread_id="thr_1",
        account_id="acct_1",
        seq=seq,
        turn=seq - (seq + 1) % 2,
        role="user" if seq % 2 else "assistant",
        content=[{"type": "text", "text": text}],
        tokens=5,
        created_at_ms=1,
        request_id="req_1",
    )


def entry(call_id: str) -> LedgerEntry:
    return LedgerEntry(
        call_id, "acct_1", "key_1", None, "thr_1", "m", "sandbox", 1, 2, 0, 0, 30, 32, 1
    )


@pytest.fixture(params=["bulk", "two inserts"])
def writer(request, mongo) -> TurnWriter:
    writer = TurnWriter(mongo, MessageStore(mongo.messages), Ledger(mongo.ledger))
    writer._bulk = request.param == "bulk"
    return writer


async def test_a_turn_lands_once_even_when_written_twice(writer, mongo):
    turn = [message("msg_a", 1), message("msg_b", 2)]

    await writer.write(turn, [entry("req_1:0")])
    await writer.write(turn, [entry("req_1:0")])

    assert await mongo.messages.count_documents({"thread_id": "thr_1"}) == 2
    assert await mongo.ledger.count_documents({}) == 1
    stored = await mongo.messages.find_one({"_id": "msg_b"})
    assert StoredMessage.from_document(stored) == turn[1]


async def test_a_taken_seq_raises_and_leaves_no_half_turn(writer, mongo):
    await writer.write([message("msg_a", 1), message("msg_b", 2)], [entry("req_1:0")])

    with pytest.raises(SeqTaken):
        await writer.write([message("msg_c", 2), message("msg_d", 3)], [entry("req_2:0")])

    ids = {doc["_id"] async for doc in mongo.messages.find({})}
    assert ids == {"msg_a", "msg_b"}
