"""The sandbox's deterministic answer, composed once and rendered by either wire format.

A wire module reads a request into a `Conversation`; `compose_answer` turns it and the
`Script` of the newest user message into an `Answer`: text, tool uses, stop reason and
usage. Nothing here knows about JSON shapes or HTTP, so both APIs answer alike.
"""

from __future__ import annotations

import codecs
import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import orjson

from serve_app.sandbox.script import Script
from serve_app.tokens import count_text, encoding

StopReason = Literal["end_turn", "max_tokens", "tool_use"]

# Each word is one cl100k token after a space, and a space-led word never merges with
# what precedes it, so n words add exactly n tokens to any sentence.
FILLER_WORDS = ("alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "green")

# A tokens= directive is bounded by max_tokens anyway; this keeps a huge max_tokens from
# turning one request into a multi-megabyte string.
FILLER_MAX_TOKENS = 131_072

TOOL_USE_ID_HEX_CHARS = 20

# History repeats from turn to turn, so the same messages are counted again and again.
# Only short texts are remembered, which bounds the cache's memory as well as its length.
_COUNT_CACHE_MAX_CHARS = 2_048


@dataclass(frozen=True, slots=True)
class ToolResult:
    """One tool result of the newest turn, with its tool already resolved by name."""

    name: str  # the tool's name from the earlier call, or the call's id if none matched
    output: str
    is_error: bool = False


@dataclass(slots=True)
class Conversation:
    """What a wire module read from a request, without its wire shape."""

    message_count: int
    newest_user_text: str
    max_tokens: int
    declared_tools: frozenset[str] = frozenset()
    tool_results: list[ToolResult] = field(default_factory=list)
    prompt_pieces: list[str] = field(default_factory=list)  # counted one by one for input


@dataclass(frozen=True, slots=True)
class ToolUse:
    id_hex: str  # each wire format puts its own prefix in front ("toolu_sbx_", "call_sbx_")
    name: str
    input: dict[str, Any]
    input_json: str  # compact JSON of `input`, as it is streamed and counted


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    tool_uses: tuple[ToolUse, ...]
    stop_reason: StopReason
    input_tokens: int
    output_tokens: int


def compose_answer(conversation: Conversation, script: Script) -> Answer:
    """The one answer the sandbox gives to this conversation."""
    input_tokens = sum(count_tokens(piece) for piece in conversation.prompt_pieces)
    context = f"({conversation.message_count} messages in context)"

    # Tool results win over calls: the calls that produced them are still in the text of
    # the newest user message on the OpenAI wire, and must not be made a second time.
    if conversation.tool_results:
        sentence = f"Tool results: {_quote_results(conversation.tool_results)} {context}"
        return _text_answer(sentence, script, conversation.max_tokens, input_tokens)

    calls = [call for call in script.calls if call.name in conversation.declared_tools]
    if calls:
        tool_uses = tuple(
            ToolUse(
                id_hex=_tool_use_id_hex(script.text, index),
                name=call.name,
                input=call.input,
                input_json=orjson.dumps(call.input).decode(),
            )
            for index, call in enumerate(calls)
        )
        return _tool_use_answer(tool_uses, input_tokens)

    sentence = f'Sandbox reply to "{script.excerpt}" {context}'
    return _text_answer(sentence, script, conversation.max_tokens, input_tokens)


def count_tokens(text: str) -> int:
    """cl100k tokens of `text`, remembered for short texts."""
    if len(text) <= _COUNT_CACHE_MAX_CHARS:
        return _count_short_text(text)
    return count_text(text)


@lru_cache(maxsize=8_192)
def _count_short_text(text: str) -> int:
    return count_text(text)


def _quote_results(results: list[ToolResult]) -> str:
    return "; ".join(
        f"{result.name} {'failed with' if result.is_error else 'returned'} {result.output}"
        for result in results
    )


def _tool_use_id_hex(user_text: str, index: int) -> str:
    # Derived from the request, not random: a retried request gets the same ids, which
    # lets a test tell a retry from a second model call.
    digest = hashlib.sha256(f"{user_text}\x00{index}".encode()).hexdigest()
    return digest[:TOOL_USE_ID_HEX_CHARS]


def _tool_use_answer(tool_uses: tuple[ToolUse, ...], input_tokens: int) -> Answer:
    # Tool-use answers are a few dozen tokens; like a real model that has decided to call
    # a tool, they are sent whole even past max_tokens rather than cut into invalid JSON.
    text = f"Calling tools: {', '.join(use.name for use in tool_uses)}."
    output_tokens = count_tokens(text) + sum(
        count_tokens(use.name + use.input_json) for use in tool_uses
    )
    return Answer(text, tool_uses, "tool_use", input_tokens, output_tokens)


def _text_answer(sentence: str, script: Script, max_tokens: int, input_tokens: int) -> Answer:
    sentence_tokens = count_tokens(sentence)
    wanted_tokens = max(sentence_tokens, min(script.directives.tokens or 0, FILLER_MAX_TOKENS))

    # Padding only to max_tokens gives the same text as padding to the full length and
    # cutting at max_tokens, since every filler word is one token.
    padded_tokens = min(wanted_tokens, max_tokens)
    text, text_tokens = sentence, sentence_tokens
    if padded_tokens > sentence_tokens:
        text, text_tokens = _pad(sentence, padded_tokens)

    if text_tokens > max_tokens:
        text = _cut_to_tokens(text, max_tokens)
        text_tokens = count_tokens(text)

    stop_reason: StopReason = "max_tokens" if wanted_tokens > max_tokens else "end_turn"
    return Answer(text, (), stop_reason, input_tokens, text_tokens)


def _pad(sentence: str, target_tokens: int) -> tuple[str, int]:
    """`sentence` followed by filler words up to `target_tokens`, and its token count."""
    missing = target_tokens - count_tokens(sentence)
    words = (FILLER_WORDS * (missing // len(FILLER_WORDS) + 1))[:missing]
    text = sentence + "".join(" " + word for word in words)
    text_tokens = count_text(text)

    # The filler words are chosen to add one token each; should a tokenizer update merge
    # some of them, keep adding words rather than report a wrong length.
    next_word = missing
    while text_tokens < target_tokens:
        text += " " + FILLER_WORDS[next_word % len(FILLER_WORDS)]
        text_tokens = count_text(text)
        next_word += 1
    return text, text_tokens


def _cut_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of `text` within `max_tokens`, cut at a word boundary if one exists.

    The first max_tokens tokens may end inside a multi-byte character; an incremental
    decoder holds those bytes back, so the cut never produces U+FFFD.
    """
    head_bytes = encoding().decode_bytes(
        encoding().encode(text, disallowed_special=())[:max_tokens]
    )
    head = codecs.getincrementaldecoder("utf-8")().decode(head_bytes, final=False)

    cut_inside_word = len(head) < len(text) and not text[len(head)].isspace()
    if cut_inside_word:
        word_start = max(head.rfind(" "), head.rfind("\n"))
        if word_start > 0:
            head = head[:word_start]
    head = head.rstrip()

    # Tokenizing a prefix alone can merge differently from the whole text; drop words
    # (or characters, in a text without spaces) until the count really fits.
    while head and count_text(head) > max_tokens:
        shorter = head.rsplit(None, 1)[0] if " " in head else head[:-1]
        head = shorter.rstrip()
    return head
