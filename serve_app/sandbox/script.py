"""Reading the newest user message: `sandbox:` directives and `call:` expressions.

Whatever a test wants from the sandbox is written into the message it sends, so a test
needs no side channel to configure latency, answer length, failures or tool calls. The
same reading applies to both wire formats; the wire modules only find the text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# `sandbox:fail=429x2` carries an attempt count after the status, the others a single number.
_DIRECTIVE = re.compile(r"sandbox:([a-z0-9_]+)(?:=(\d+)(?:x(\d+))?)?")
_CALL_START = re.compile(r"call:([A-Za-z0-9_-]+)\(\s*(?=\{)")
_WHITESPACE = re.compile(r"\s+")

# The JSON object of a `call:` is parsed in place, where the regex leaves off, so a nested
# object or a ")" inside a JSON string cannot end the expression early.
_JSON = json.JSONDecoder()

EXCERPT_MAX_CHARS = 40
_FAIL_STATUS_MIN = 400
_FAIL_STATUS_MAX = 599


@dataclass(frozen=True, slots=True)
class Directives:
    delay_ms: int = 0  # before the response, or before the first byte of a stream
    tokens: int | None = None  # pad the answer text up to this many cl100k tokens
    fail_status: int | None = None  # answer with this HTTP status instead
    fail_attempts: int | None = None  # fail only this many attempts of one body; None: always
    stream_delay_ms: int = 0  # between two events of a stream
    split_utf8: bool = False  # write a stream in pieces of 1 to 3 bytes
    stream_cut: int | None = None  # drop the connection after this many events of a stream


@dataclass(frozen=True, slots=True)
class CallExpression:
    """One `call:NAME({...})` as written; whether it becomes a tool call depends on `tools`."""

    name: str
    input: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Script:
    """What the newest user message asks the sandbox to do."""

    text: str  # the message text as received, the seed of deterministic tool use ids
    excerpt: str  # directives and calls removed, whitespace collapsed, at most 40 characters
    directives: Directives = field(default_factory=Directives)
    calls: tuple[CallExpression, ...] = ()


def read_script(text: str) -> Script:
    """Split a user message into its directives, its `call:` expressions and the rest."""
    calls, kept_text = _take_calls(text)
    directives = _read_directives(kept_text)

    remainder = _DIRECTIVE.sub(" ", kept_text)
    excerpt = _WHITESPACE.sub(" ", remainder).strip()[:EXCERPT_MAX_CHARS]
    return Script(text=text, excerpt=excerpt, directives=directives, calls=tuple(calls))


def _take_calls(text: str) -> tuple[list[CallExpression], str]:
    """The well-formed `call:` expressions in order, and the text with them cut out.

    A `call:` whose JSON does not parse to an object, or is not closed by ")", is not an
    expression: it stays in the text, as a model would read it as prose.
    """
    calls: list[CallExpression] = []
    kept: list[str] = []
    position = 0
    search_from = 0

    while match := _CALL_START.search(text, search_from):
        parsed = _parse_call_input(text, match.end())
        if parsed is None:
            search_from = match.end()
            continue

        tool_input, end = parsed
        calls.append(CallExpression(name=match.group(1), input=tool_input))
        kept.append(text[position : match.start()])
        position = end
        search_from = end

    kept.append(text[position:])
    return calls, " ".join(kept)


def _parse_call_input(text: str, json_start: int) -> tuple[dict[str, Any], int] | None:
    """The input of the expression whose JSON starts at `json_start`, and where it ends."""
    try:
        tool_input, json_end = _JSON.raw_decode(text, json_start)
    except json.JSONDecodeError:
        return None
    if not isinstance(tool_input, dict):
        return None

    close = json_end
    while close < len(text) and text[close].isspace():
        close += 1
    if close >= len(text) or text[close] != ")":
        return None
    return tool_input, close + 1


def _read_directives(text: str) -> Directives:
    values: dict[str, Any] = {}

    for match in _DIRECTIVE.finditer(text):
        name, number, attempts = match.groups()
        if name == "split_utf8":
            values["split_utf8"] = True
        elif number is None:
            continue  # every other directive needs a value; a bare one is ignored
        elif name in ("delay_ms", "stream_delay_ms", "tokens", "stream_cut"):
            values[name] = int(number)
        elif name == "fail" and _FAIL_STATUS_MIN <= int(number) <= _FAIL_STATUS_MAX:
            values["fail_status"] = int(number)
            values["fail_attempts"] = int(attempts) if attempts else None

    return Directives(**values)
