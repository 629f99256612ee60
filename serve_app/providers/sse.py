"""An incremental Server-Sent Events reader over a byte stream.

Both providers stream `text/event-stream`
(https://html.spec.whatwg.org/multipage/server-sent-events.html).
Network chunks cut the stream anywhere, including inside a multi-byte UTF-8 character, so
bytes go through an incremental decoder: a character split across two chunks is held back
until its last byte arrives instead of turning into U+FFFD on each side of the cut.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str  # the `event:` field, "" when the server sent none (OpenAI never does)
    data: str  # the `data:` lines joined with "\n"


class SseParser:
    """Feed bytes in, take whole events out; keeps the partial line and event between feeds.

    Lines end with LF or CRLF. A bare CR as line terminator is allowed by the spec but sent by
    neither provider, and honouring it would mean holding back every chunk that ends in CR.
    """

    def __init__(self) -> None:
        # Strict decoding: invalid UTF-8 from a provider is an error to report, not a
        # character to paper over with U+FFFD.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self._partial_line = ""
        self._event = ""
        self._data_lines: list[str] = []

    def feed(self, chunk: bytes) -> list[SseEvent]:
        text = self._partial_line + self._decoder.decode(chunk)
        *lines, self._partial_line = text.split("\n")

        events: list[SseEvent] = []
        for line in lines:
            event = self._take_line(line[:-1] if line.endswith("\r") else line)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[SseEvent]:
        """End of stream: a final event without its blank line still counts."""
        # final=True raises on a character cut off by the end of the stream.
        tail = self._partial_line + self._decoder.decode(b"", final=True)
        self._partial_line = ""

        if tail:
            self._take_line(tail.removesuffix("\r"))
        event = self._dispatch()
        return [event] if event is not None else []

    def _take_line(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None  # a comment, used by servers as a keep-alive

        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data_lines.append(value)
        elif name == "event":
            self._event = value
        # `id:` and `retry:` only matter to browsers that reconnect; no provider stream
        # can be resumed, so they are ignored.
        return None

    def _dispatch(self) -> SseEvent | None:
        if not self._data_lines:
            self._event = ""
            return None

        event = SseEvent(self._event, "\n".join(self._data_lines))
        self._event = ""
        self._data_lines = []
        return event


async def iter_sse(chunks: AsyncIterable[bytes]) -> AsyncIterator[SseEvent]:
    """Events from a stream of byte chunks (e.g. `response.content.iter_any()`), as they arrive."""
    parser = SseParser()
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
    for event in parser.close():
        yield event
