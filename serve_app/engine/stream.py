"""A streamed turn: each upstream event is forwarded the moment it arrives, and the whole
turn is persisted and billed when the upstream stream ends, whatever the client does.

The turn runs as its own task. The response body only reads what that task queues, so a
client that leaves stops the reading, not the turn: by default the task drains the
upstream to its end and stores the full answer (`stream_disconnect="drain"`); with
`"cancel"` it stops the upstream call and stores what had arrived as "interrupted".
Either way the turn is billed by the usage the provider reported, or by a cl100k count of
what was received where the provider reported none, never zero (invariant 4).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from serve_app.canonical import StreamEvent, Usage
from serve_app.engine.events import (
    PING,
    encode_event,
    error_event,
    upstream_error_event,
)
from serve_app.engine.turn import PreparedTurn, TurnEngine, TurnInput, TurnResult
from serve_app.errors import UpstreamError
from serve_app.providers.assembly import StreamAssembler
from serve_app.services import Services
from serve_app.stores.keys import KeyRecord
from serve_app.stores.threads import ThreadRecord
from serve_app.tokens import count_content

logger = logging.getLogger(__name__)

# Held back until the turn is persisted: a client that sees message_stop can read the
# turn back, and the next turn's history holds it.
_FINAL_EVENT = "message_stop"

OnFinished = Callable[[TurnResult | None], Awaitable[None]]


class TurnStream:
    """One streamed turn. `start` it, then send `body()` as the response."""

    def __init__(
        self,
        services: Services,
        key: KeyRecord,
        thread: ThreadRecord,
        turn: TurnInput,
        request_id: str,
        on_finished: OnFinished | None = None,
    ) -> None:
        self._services = services
        self._engine = TurnEngine(services)
        self._key = key
        self._thread = thread
        self._turn = turn
        self._request_id = request_id
        self._on_finished = on_finished
        self._ping_interval_s = services.settings.stream_ping_interval_s
        self._cancel_on_disconnect = services.settings.stream_disconnect == "cancel"

        self._outbox: list[bytes] = []  # encoded events the body has not sent yet
        self._ended = False  # nothing more will be sent
        self._wake = asyncio.Event()
        self._opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader: asyncio.Task[None] | None = None
        self._streaming = False  # the upstream answered and the response may begin
        self._client_gone = False
        self.result: TurnResult | None = None

    async def start(self) -> None:
        """Run the turn up to the upstream's first event.

        Whatever goes wrong before that (a 402, a busy thread, a store or upstream failure)
        is raised here, while the response can still be a plain JSON error.
        """
        task = asyncio.create_task(self._run())
        task.add_done_callback(self._log_failure)
        self._services.turns_in_flight.track(task, interrupt=self._interrupt)
        # Shielded: if the client leaves now, the turn goes on and is stored and billed.
        await asyncio.shield(self._opened)

    async def body(self) -> AsyncIterator[bytes]:
        """The response body: queued events as they come, a ping after each silence.

        Events that queued up while the previous write went out leave together, in one
        write; nothing is held back to wait for more.
        """
        delivered = False
        try:
            while True:
                if not self._outbox and not self._ended:
                    self._wake.clear()
                    try:
                        async with asyncio.timeout(self._ping_interval_s):
                            await self._wake.wait()
                    except TimeoutError:
                        yield PING
                        continue
                if self._outbox:
                    chunk = b"".join(self._outbox)
                    self._outbox.clear()
                    yield chunk
                elif self._ended:
                    delivered = True
                    return
        finally:
            if not delivered:
                self._client_left()

    def _log_failure(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            logger.warning(
                "request %s: a streamed turn failed after it started: %r", self._request_id, error
            )

    def _interrupt(self) -> None:
        """Stop reading the upstream; what arrived is stored as "interrupted" and billed."""
        if self._reader is not None:
            self._reader.cancel()

    def _client_left(self) -> None:
        self._client_gone = True
        logger.info("request %s: the client left mid-stream", self._request_id)
        if self._cancel_on_disconnect and self._reader is not None:
            self._reader.cancel()

    def _send(self, chunk: bytes) -> None:
        if not self._client_gone:
            self._outbox.append(chunk)
            self._wake.set()

    def _end(self) -> None:
        self._ended = True
        self._wake.set()

    async def _run(self) -> None:
        result: TurnResult | None = None
        try:
            async with self._engine.prepare(
                self._key, self._thread, self._turn, self._request_id
            ) as prepared:
                result = await self._stream(prepared)
        except BaseException as exc:
            if not self._streaming:
                _fail(self._opened, exc)
                return
            self._send(error_event(exc, self._request_id))
            raise
        finally:
            self._end()
            if self._streaming and self._on_finished is not None:
                await asyncio.shield(self._on_finished(result))

    async def _stream(self, prepared: PreparedTurn) -> TurnResult:
        assembler = StreamAssembler()
        async with aclosing(self._services.router.stream(prepared.call)) as events:
            try:
                first = await anext(events)
            except BaseException:
                await self._engine.release(self._key, prepared)
                raise
            if first.get("type") == "error":
                await self._engine.release(self._key, prepared)
                raise UpstreamError(_upstream_message(first))

            # From here the upstream has the call: whatever happens, the turn is billed.
            assembler.feed(first)
            self._send(encode_event(self._announce(first, prepared)))
            self._streaming = True
            self._opened.set_result(None)

            self._reader = asyncio.create_task(self._read(events, assembler))
            await asyncio.wait([self._reader])

        failure = None
        if not self._reader.cancelled():
            failure = self._reader.exception()
        return await self._finish(prepared, assembler, failure)

    async def _read(self, events: AsyncIterator[StreamEvent], assembler: StreamAssembler) -> None:
        async for event in events:
            assembler.feed(event)
            kind = event.get("type")
            if kind == _FINAL_EVENT or kind == "error":
                continue  # sent once the turn is stored
            self._send(encode_event(event))

    async def _finish(
        self,
        prepared: PreparedTurn,
        assembler: StreamAssembler,
        failure: BaseException | None,
    ) -> TurnResult:
        complete = assembler.finished and assembler.error is None
        answer = assembler.answer(self._services.router.upstream_label(prepared.spec.provider))
        answer.usage = _billed_usage(assembler.usage, answer.content, prepared, complete)

        result = await self._engine.finish(
            self._key,
            self._thread,
            prepared,
            answer,
            status="complete" if complete else "interrupted",
        )
        self.result = result
        if self._client_gone:
            logger.info(
                "request %s: stored and billed after the client left: seq %d, %s, %d micros",
                self._request_id,
                result.assistant_message.seq,
                result.assistant_message.status,
                result.cost.cost_micros,
            )

        if complete:
            stop = {"type": _FINAL_EVENT, "cost_micros": result.cost.cost_micros}
            self._send(encode_event(stop))
        elif assembler.error is not None:
            self._send(upstream_error_event(assembler.error, self._request_id))
        elif failure is not None:
            self._send(error_event(failure, self._request_id))
        elif not self._client_gone:
            stopped = UpstreamError("the upstream stream ended before message_stop")
            self._send(error_event(stopped, self._request_id))

        # The access log line covers a stream that ran its course; one cut short is told.
        logger.log(
            logging.DEBUG if complete else logging.INFO,
            "request %s: streamed turn stored as %s, %d output tokens, %d micro-dollars",
            self._request_id,
            result.assistant_message.status,
            answer.usage.output_tokens,
            result.cost.cost_micros,
        )
        return result

    def _announce(self, message_start: StreamEvent, prepared: PreparedTurn) -> StreamEvent:
        """message_start names the message as it will be stored: its id, model and seq."""
        message = dict(message_start.get("message") or {})
        message["id"] = prepared.assistant_message_id
        message["model"] = prepared.spec.name
        message["thread_id"] = self._thread.id
        message["seq"] = prepared.user_message.seq + 1
        return {**message_start, "message": message}


def _billed_usage(
    reported: Usage, content: list[dict[str, Any]], prepared: PreparedTurn, complete: bool
) -> Usage:
    """The usage to bill: what the provider reported, filled in where it reported nothing.

    A stream cut short never got its final usage (Anthropic reports output tokens at the
    end), and some OpenAI-compatible servers send none at all: then what was received is
    counted, and the prompt is counted as sent.
    """
    usage = Usage(**reported.as_dict())
    prompt_reported = usage.input_tokens or usage.cache_read_input_tokens
    if not prompt_reported:
        usage.input_tokens = prepared.prompt_tokens
    if not complete or usage.output_tokens == 0:
        usage.output_tokens = max(usage.output_tokens, count_content(content))
    return usage


def _upstream_message(error_event: StreamEvent) -> str:
    error = error_event.get("error") or {}
    return f"the upstream failed: {error.get('message') or error.get('type') or 'unknown error'}"


def _fail(future: asyncio.Future[None], error: BaseException) -> None:
    if isinstance(error, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(error)
