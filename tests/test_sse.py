"""The incremental SSE reader: events split anywhere, UTF-8 split anywhere."""

import pytest

from serve_app.providers.sse import SseEvent, SseParser, iter_sse

STREAM = (
    "event: message_start\n"
    'data: {"type":"message_start"}\n'
    "\n"
    ": keep-alive comment\n"
    "\n"
    "event: content_block_delta\n"
    'data: {"text":"héllo 👋🏽 世界"}\n'
    "\n"
    "data: [DONE]\n"
    "\n"
).encode()

EXPECTED = [
    SseEvent("message_start", '{"type":"message_start"}'),
    SseEvent("content_block_delta", '{"text":"héllo 👋🏽 世界"}'),
    SseEvent("", "[DONE]"),
]


def parse_in_pieces(raw: bytes, size: int) -> list[SseEvent]:
    parser = SseParser()
    events = []
    for start in range(0, len(raw), size):
        events.extend(parser.feed(raw[start : start + size]))
    events.extend(parser.close())
    return events


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, len(STREAM)])
def test_events_and_characters_survive_any_split(size):
    events = parse_in_pieces(STREAM, size)

    assert events == EXPECTED
    assert all("\ufffd" not in event.data for event in events)


def test_crlf_line_endings_and_multiline_data():
    raw = b"event: x\r\ndata: one\r\ndata: two\r\n\r\ndata:no-space\r\n\r\n"

    assert parse_in_pieces(raw, 1) == [SseEvent("x", "one\ntwo"), SseEvent("", "no-space")]


def test_last_event_without_blank_line_is_kept():
    assert parse_in_pieces(b"data: tail", 4) == [SseEvent("", "tail")]


def test_invalid_utf8_raises_instead_of_replacing():
    parser = SseParser()

    with pytest.raises(UnicodeDecodeError):
        parser.feed(b"data: \xff\xfe\n\n")


def test_character_cut_by_the_end_of_stream_raises():
    parser = SseParser()
    parser.feed("data: 世".encode()[:-1])

    with pytest.raises(UnicodeDecodeError):
        parser.close()


async def test_iter_sse_reads_an_async_byte_stream():
    async def pieces():
        for start in range(0, len(STREAM), 2):
            yield STREAM[start : start + 2]

    assert [event async for event in iter_sse(pieces())] == EXPECTED
