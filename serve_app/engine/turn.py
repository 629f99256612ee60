"""One turn of a conversation: window, reserve, call the model, persist, settle.

Invariant 1 lives here: the worst case of every model call is reserved before the call,
and a refusal (402) happens before the upstream is ever reached. After the call the
reservation is settled to the actual cost, or released if the call failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from serve_app.budget import iso_from_ms, window_at
from serve_app.canonical import ModelAnswer, ModelCall
from serve_app.catalog import ModelSpec
from serve_app.clock import now_ms
from serve_app.engine.history import HistoryWindow, build_window
from serve_app.errors import SpendCapExceeded, StoreUnavailable
from serve_app.ids import new_id
from serve_app.money import CallCost, cost_of, worst_case_micros
from serve_app.services import Services
from serve_app.stores.keys import KeyRecord
from serve_app.stores.ledger import LedgerEntry, Reservation
from serve_app.stores.messages import SeqTaken, StoredMessage
from serve_app.stores.threads import ThreadRecord
from serve_app.stores.turn_state import HeldTurn
from serve_app.tokens import count_text, message_tokens

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TurnInput:
    model: str
    max_tokens: int
    content: list[dict[str, Any]]
    system: str | list[dict[str, Any]] | None = None
    temperature: float | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PreparedTurn:
    """A turn that holds its thread and a reservation, ready for the model call."""

    spec: ModelSpec
    held: HeldTurn
    user_message: StoredMessage
    call: ModelCall
    call_id: str  # the reservation's and the ledger entry's id
    prompt_tokens: int  # cl100k count of the window and system prompt
    assistant_message_id: str  # known before the answer, so a stream can announce it


@dataclass(frozen=True, slots=True)
class TurnResult:
    user_message: StoredMessage
    assistant_message: StoredMessage
    answer: ModelAnswer
    cost: CallCost

    def response_body(self) -> dict[str, Any]:
        """The Anthropic message object, plus where it landed and what it cost."""
        message = self.assistant_message
        return {
            "id": message.id,
            "type": "message",
            "role": "assistant",
            "model": message.model,
            "content": message.content,
            "stop_reason": message.stop_reason,
            "stop_sequence": None,
            "usage": message.usage,
            "thread_id": message.thread_id,
            "seq": message.seq,
            "cost_micros": message.cost_micros,
        }


class TurnEngine:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._settings = services.settings

    async def run(
        self, key: KeyRecord, thread: ThreadRecord, turn: TurnInput, request_id: str
    ) -> TurnResult:
        async with self.prepare(key, thread, turn, request_id) as prepared:
            try:
                answer = await self._services.router.complete(prepared.call)
            except BaseException:
                await self.release(key, prepared)
                raise
            return await self.finish(key, thread, prepared, answer)

    @asynccontextmanager
    async def prepare(
        self, key: KeyRecord, thread: ThreadRecord, turn: TurnInput, request_id: str
    ) -> AsyncIterator[PreparedTurn]:
        """Hold the thread's turn, build the model call and reserve its worst case.

        Raises `SpendCapExceeded` before anything reaches the upstream. The caller settles
        the reservation with `finish` or gives it back with `release` before leaving.
        """
        spec = self._services.catalog.get(turn.model)

        async with self._services.turn_state.turn(thread.id) as held:
            user_message = self._user_message(thread, turn, held.window.next_seq, request_id)
            history = self._history(spec, turn, held.window.turns, user_message)
            call = ModelCall(
                provider=spec.provider,
                upstream_model=spec.upstream_id,
                messages=history.messages,
                max_tokens=turn.max_tokens,
                system=turn.system,
                temperature=turn.temperature,
                tool_choice=turn.tool_choice,
                request_id=request_id,
            )
            prepared = PreparedTurn(
                spec=spec,
                held=held,
                user_message=user_message,
                call=call,
                call_id=f"{request_id}:0",
                prompt_tokens=history.tokens + _system_tokens(turn.system),
                assistant_message_id=new_id("msg"),
            )

            await self._reserve(key, thread, spec, turn, prepared)
            async with self._services.spend.kept_alive(key.id, prepared.call_id):
                yield prepared

    async def release(self, key: KeyRecord, prepared: PreparedTurn) -> None:
        """Give back the reservation of a call that produced nothing to bill."""
        await asyncio.shield(self._services.spend.release(key.id, prepared.call_id))

    def _user_message(
        self, thread: ThreadRecord, turn: TurnInput, seq: int, request_id: str
    ) -> StoredMessage:
        return StoredMessage(
            id=new_id("msg"),
            thread_id=thread.id,
            account_id=thread.account_id,
            seq=seq,
            turn=seq,
            role="user",
            content=turn.content,
            tokens=message_tokens(turn.content),
            created_at_ms=now_ms(),
            request_id=request_id,
            extra={"metadata": turn.metadata} if turn.metadata else {},
        )

    def _history(
        self,
        spec: ModelSpec,
        turn: TurnInput,
        stored_turns: list[list[dict[str, Any]]],
        user_message: StoredMessage,
    ) -> HistoryWindow:
        budget = spec.context_window - turn.max_tokens - _system_tokens(turn.system)
        return build_window(
            stored_turns,
            [user_message.window_entry()],
            budget,
            self._settings.history_max_turns,
        )

    async def _reserve(
        self,
        key: KeyRecord,
        thread: ThreadRecord,
        spec: ModelSpec,
        turn: TurnInput,
        prepared: PreparedTurn,
    ) -> None:
        # The provider's tokenizer may count more than cl100k does; reserve for that.
        estimate = -(-prepared.prompt_tokens * spec.estimate_factor_pct // 100)
        worst_case = worst_case_micros(
            estimate, turn.max_tokens, spec.prices, self._settings.markup_bp
        )
        reservation = Reservation(
            call_id=prepared.call_id,
            account_id=key.account_id,
            key_id=key.id,
            end_user_id=thread.end_user_id,
            thread_id=thread.id,
            model=spec.name,
            amount_micros=worst_case,
        )

        admission = await self._services.spend.reserve(
            reservation, key.budget_period, key.max_spend_micros, now_ms()
        )
        if not admission.admitted:
            raise SpendCapExceeded(
                f"this turn may cost up to {worst_case} micro-dollars, which does not fit in "
                f"key {key.id}'s remaining budget; lower max_tokens or raise the cap",
                max_spend_micros=key.max_spend_micros,
                requested_micros=worst_case,
                spent_micros=admission.spent_micros,
                reserved_micros=admission.reserved_micros,
                resets_at=iso_from_ms(admission.window.end_ms),
            )

    async def finish(
        self,
        key: KeyRecord,
        thread: ThreadRecord,
        prepared: PreparedTurn,
        answer: ModelAnswer,
        status: str = "complete",
    ) -> TurnResult:
        """Persist and bill an answer the upstream produced: the cost is real from here on,
        so the reservation is settled even if persisting fails.

        `status` is "interrupted" for an answer cut short (a stream that ended early).
        """
        spec, held, user_message, call_id = (
            prepared.spec,
            prepared.held,
            prepared.user_message,
            prepared.call_id,
        )
        settled_at_ms = now_ms()
        cost = cost_of(answer.usage, spec.prices, self._settings.markup_bp)
        period_id = window_at(key.budget_period, settled_at_ms).period_id
        assistant_message = StoredMessage(
            id=prepared.assistant_message_id,
            thread_id=thread.id,
            account_id=thread.account_id,
            seq=user_message.seq + 1,
            turn=user_message.turn,
            role="assistant",
            content=answer.content,
            tokens=message_tokens(answer.content),
            created_at_ms=settled_at_ms,
            request_id=user_message.request_id,
            model=spec.name,
            status=status,
            stop_reason=answer.stop_reason,
            usage=answer.usage.as_dict(),
            cost_micros=cost.cost_micros,
            extra={"upstream_id": answer.upstream_id, "upstream": answer.upstream},
        )
        entry = LedgerEntry(
            call_id=call_id,
            account_id=key.account_id,
            key_id=key.id,
            end_user_id=thread.end_user_id,
            thread_id=thread.id,
            model=spec.name,
            upstream=answer.upstream,
            input_tokens=answer.usage.input_tokens,
            output_tokens=answer.usage.output_tokens,
            cache_read_input_tokens=answer.usage.cache_read_input_tokens,
            cache_creation_input_tokens=answer.usage.cache_creation_input_tokens,
            upstream_cost_micros=cost.upstream_cost_micros,
            cost_micros=cost.cost_micros,
            created_at_ms=settled_at_ms,
        )

        turn_messages = [user_message, assistant_message]
        try:
            # The ledger is settled before the counters move: if Redis is rebuilt in
            # between, the call is counted twice (refusing early), never zero times.
            cache_current = await self._persist(held, turn_messages, entry)
        except BaseException:
            # Unknown whether the write landed, but the upstream was paid: the ledger gets
            # the call on its own (a record that holds nothing the client sent), and the
            # cap counts it.
            await asyncio.shield(self._bill_alone(key, entry, period_id))
            raise

        commit = None
        if cache_current:
            entries = [message.window_entry() for message in turn_messages]
            commit = self._services.turn_state.commit(held, entries, assistant_message.seq + 1)
        settle = self._settle(key, call_id, cost.cost_micros, period_id)
        await asyncio.shield(asyncio.gather(settle, *([commit] if commit else [])))
        return TurnResult(user_message, assistant_message, answer, cost)

    async def _bill_alone(self, key: KeyRecord, entry: LedgerEntry, period_id: str) -> None:
        try:
            await self._services.ledger.record(entry)
        except StoreUnavailable:
            logger.error(
                "call %s was answered but could not be billed in the ledger", entry.call_id
            )
        await self._settle(key, entry.call_id, entry.cost_micros, period_id)

    async def _settle(self, key: KeyRecord, call_id: str, cost_micros: int, period_id: str) -> None:
        """Move the counters; the turn is already billed in the ledger, so a Redis failure
        here fails nothing: the reservation outlives its renewals, expires, and the next
        admission rebuilds the counters from the ledger."""
        try:
            await self._services.spend.settle(key.id, call_id, cost_micros, period_id)
        except StoreUnavailable:
            logger.warning("settling call %s in Redis failed; the ledger will decide", call_id)

    async def _persist(
        self, held: HeldTurn, turn_messages: list[StoredMessage], entry: LedgerEntry
    ) -> bool:
        """Write the turn, retrying while MongoDB is away (every write is idempotent, so a
        write that landed unseen is not doubled); False if the window cache turned out
        stale and was dropped."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(StoreUnavailable),
            stop=stop_after_delay(self._settings.persist_retry_s),
            wait=wait_random_exponential(multiplier=0.1, max=3),
            reraise=True,
        )
        cache_current = True
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    logger.warning(
                        "thread %s: writing a finished turn again (attempt %d)",
                        held.thread_id,
                        attempt.retry_state.attempt_number,
                    )
                cache_current = await self._write_turn(held, turn_messages, entry)
        return cache_current

    async def _write_turn(
        self, held: HeldTurn, turn_messages: list[StoredMessage], entry: LedgerEntry
    ) -> bool:
        try:
            await self._services.turn_writer.write(turn_messages, [entry])
            return True
        except SeqTaken:
            # The cached next seq was stale (a Redis failure lost an update). MongoDB
            # knows the real last seq: renumber this turn after it, write again, and let
            # the next turn refill the cache from MongoDB.
            thread_id = held.thread_id
            await self._services.turn_state.forget(held)
            first_seq = await self._services.messages.last_seq(thread_id) + 1
            logger.warning("thread %s: renumbering a turn from seq %d", thread_id, first_seq)
            for offset, message in enumerate(turn_messages):
                message.seq = first_seq + offset
                message.turn = first_seq
            await self._services.turn_writer.write(turn_messages, [entry])
            return False


def _system_tokens(system: str | list[dict[str, Any]] | None) -> int:
    if system is None:
        return 0
    if isinstance(system, str):
        return count_text(system)
    return sum(count_text(block.get("text", "")) for block in system)
