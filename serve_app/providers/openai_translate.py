"""Translation between canonical (Anthropic-format) content and OpenAI Chat Completions.

Pure functions and one stateful stream translator; nothing here does I/O, so every rule is
tested with hand-written payloads. The shapes follow
https://platform.openai.com/docs/api-reference/chat and
https://docs.anthropic.com/en/api/messages-streaming.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from serve_app.canonical import Block, Message, ModelAnswer, ModelCall, StreamEvent, Usage
from serve_app.errors import InvalidRequest, UpstreamError

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",  # the pre-tools name some compatible servers still send
    "content_filter": "refusal",
}

TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}

# Chat Completions tool messages carry text only; an image a tool returned is named, not sent.
IMAGE_IN_TOOL_RESULT = "[image]"

# Blocks an assistant turn may hold that have no Chat Completions counterpart and carry
# nothing the next model call needs.
SKIPPED_ASSISTANT_BLOCKS = frozenset({"thinking", "redacted_thinking"})


# Canonical -> OpenAI request.


def chat_request(
    call: ModelCall, *, stream: bool, max_tokens_field: str = "max_completion_tokens"
) -> dict[str, Any]:
    """The Chat Completions request body for a canonical call.

    `max_tokens_field` is "max_completion_tokens" for OpenAI, whose current models reject
    "max_tokens", and "max_tokens" for compatible servers that predate the rename.
    """
    body: dict[str, Any] = {
        "model": call.upstream_model,
        "messages": chat_messages(call.system, call.messages),
        max_tokens_field: call.max_tokens,
    }

    if call.temperature is not None:
        body["temperature"] = call.temperature

    # OpenAI rejects tool_choice without tools, so a choice alone is dropped.
    if call.tools:
        body["tools"] = [tool_definition(tool) for tool in call.tools]
        if call.tool_choice is not None:
            body["tool_choice"] = tool_choice(call.tool_choice)
            if call.tool_choice.get("disable_parallel_tool_use"):
                body["parallel_tool_calls"] = False

    if stream:
        body["stream"] = True
        # Without this the stream carries no usage at all and the turn could not be billed.
        body["stream_options"] = {"include_usage": True}
    return body


def chat_messages(system: str | list[Block] | None, messages: list[Message]) -> list[dict]:
    """Canonical system + messages as a Chat Completions message list."""
    chat: list[dict] = []

    system_text = system if isinstance(system, str) else _joined_text(system or [], "\n")
    if system_text:
        chat.append({"role": "system", "content": system_text})

    for message in messages:
        role = message.get("role")
        if role == "user":
            chat.extend(_user_messages(message.get("content", "")))
        elif role == "assistant":
            chat.append(_assistant_message(message.get("content", "")))
        else:
            raise InvalidRequest(f"message role must be 'user' or 'assistant', got {role!r}")
    return chat


def tool_definition(tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool["name"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def tool_choice(choice: dict[str, Any]) -> str | dict[str, Any]:
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice["name"]}}
    if kind in TOOL_CHOICES:
        return TOOL_CHOICES[kind]
    raise InvalidRequest(f"tool_choice type must be 'auto', 'any', 'tool' or 'none', got {kind!r}")


def _user_messages(content: str | list[Block]) -> list[dict]:
    """One canonical user message: a tool message per tool_result, then the rest of it.

    Chat Completions requires each tool message right after the assistant message that
    called the tool, so the results go first even if the user wrote text before them.
    """
    if isinstance(content, str):
        return [{"role": "user", "content": content}]

    chat: list[dict] = []
    parts: list[dict] = []
    for block in content:
        kind = block.get("type")
        if kind == "tool_result":
            chat.append(
                {
                    "role": "tool",
                    "tool_call_id": block["tool_use_id"],
                    "content": tool_result_text(block),
                }
            )
        elif kind == "text":
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
        else:
            raise InvalidRequest(f"a user message cannot hold a {kind!r} block for this model")

    if not parts:
        return chat
    if all(part["type"] == "text" for part in parts):
        chat.append({"role": "user", "content": "\n".join(part["text"] for part in parts)})
    else:
        chat.append({"role": "user", "content": parts})
    return chat


def tool_result_text(block: Block) -> str:
    """A tool_result's content as the string a tool message carries.

    Chat Completions has no is_error flag, so a failed tool's output is prefixed with
    "Error: " for the model to see that the call failed rather than returned this text.
    """
    content = block.get("content", "")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "\n".join(_tool_result_part(part) for part in content)
    else:
        text = orjson.dumps(content).decode()
    return f"Error: {text}" if block.get("is_error") else text


def _tool_result_part(part: Any) -> str:
    if isinstance(part, dict) and part.get("type") == "text":
        return part.get("text", "")
    if isinstance(part, dict) and part.get("type") == "image":
        return IMAGE_IN_TOOL_RESULT
    return part if isinstance(part, str) else orjson.dumps(part).decode()


def _image_url(block: Block) -> str:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        return f"data:{source['media_type']};base64,{source['data']}"
    if source.get("type") == "url":
        return source["url"]
    raise InvalidRequest(f"image source type must be 'base64' or 'url', got {source.get('type')!r}")


def _assistant_message(content: str | list[Block]) -> dict:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}

    texts: list[str] = []
    tool_calls: list[dict] = []
    for block in content:
        kind = block.get("type")
        if kind == "text":
            texts.append(block["text"])
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {
                        "name": block["name"],
                        "arguments": orjson.dumps(block.get("input", {})).decode(),
                    },
                }
            )
        elif kind not in SKIPPED_ASSISTANT_BLOCKS:
            raise InvalidRequest(f"an assistant message cannot hold a {kind!r} block")

    text = "".join(texts)
    if not tool_calls:
        return {"role": "assistant", "content": text}
    return {"role": "assistant", "content": text or None, "tool_calls": tool_calls}


def _joined_text(blocks: list[Block], separator: str) -> str:
    return separator.join(block.get("text", "") for block in blocks if block.get("type") == "text")


# OpenAI response -> canonical.


def answer_from_completion(
    completion: dict[str, Any], *, upstream: str, provider: str = "openai"
) -> ModelAnswer:
    """A non-streamed chat.completion as a canonical answer."""
    choices = completion.get("choices")
    if not choices:
        raise UpstreamError(f"the {provider} upstream answered with no choices")
    choice = choices[0]
    message = choice.get("message") or {}

    content: list[Block] = []
    text = _message_text(message)
    if text:
        content.append({"type": "text", "text": text})
    for tool_call in message.get("tool_calls") or []:
        function = tool_call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": tool_call.get("id") or new_tool_use_id(),
                "name": function.get("name", ""),
                "input": parse_arguments(function.get("arguments"), provider),
            }
        )

    has_tool_use = any(block["type"] == "tool_use" for block in content)
    return ModelAnswer(
        upstream_id=completion.get("id", ""),
        content=content,
        stop_reason=stop_reason(choice.get("finish_reason"), has_tool_use),
        usage=usage_from_openai(completion.get("usage")),
        upstream=upstream,
    )


def _message_text(message: dict[str, Any]) -> str:
    text = message.get("content")
    if isinstance(text, list):  # some compatible servers answer in content parts
        text = "".join(part.get("text", "") for part in text if isinstance(part, dict))
    if not text:
        # A refusal arrives in its own field with content null; show it rather than nothing.
        text = message.get("refusal")
    return text if isinstance(text, str) else ""


def parse_arguments(arguments: str | None, provider: str = "openai") -> dict[str, Any]:
    """A tool call's argument string as the tool_use input object ("" means no arguments)."""
    if not arguments:
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise UpstreamError(
            f"the {provider} upstream sent tool call arguments that are not JSON"
        ) from None
    if not isinstance(parsed, dict):
        raise UpstreamError(
            f"the {provider} upstream sent tool call arguments that are not a JSON object"
        )
    return parsed


def stop_reason(finish_reason: str | None, has_tool_use: bool) -> str:
    """The canonical stop_reason for an OpenAI finish_reason.

    Some compatible servers (vLLM, Ollama) finish a tool-calling answer with "stop"; the
    tool loop keys on "tool_use", so tool calls win over the reported reason.
    """
    reason = STOP_REASONS.get(finish_reason or "stop", "end_turn")
    if has_tool_use and reason == "end_turn":
        return "tool_use"
    return reason


def usage_from_openai(usage: dict[str, Any] | None) -> Usage:
    """Canonical usage from OpenAI's: prompt_tokens includes the cached tokens, input_tokens not."""
    if not usage:
        return Usage()
    details = usage.get("prompt_tokens_details") or {}
    cached_tokens = details.get("cached_tokens") or 0
    return Usage(
        input_tokens=(usage.get("prompt_tokens") or 0) - cached_tokens,
        output_tokens=usage.get("completion_tokens") or 0,
        cache_read_input_tokens=cached_tokens,
    )


def new_tool_use_id() -> str:
    """An id for a tool call a compatible server sent without one: results must refer to it."""
    return f"call_{secrets.token_hex(12)}"


# Streamed OpenAI chunks -> Anthropic events.


class OpenAIStreamTranslator:
    """Turns chat.completion.chunk objects into the Anthropic events the gateway reads.

    Feed each chunk in order, then call `finish()` on `[DONE]` or at the end of the stream.
    Events come out as: message_start (usage all zero: OpenAI reports usage only at the
    end), content blocks indexed from 0 in order, then one message_delta holding both the
    stop_reason and the final usage, then message_stop. With `include_usage` OpenAI sends
    finish_reason one chunk before the usage, so the stop_reason is held until the usage
    chunk (or `finish()`) arrives.
    """

    def __init__(self, *, model: str, provider: str = "openai") -> None:
        self._model = model
        self._provider = provider
        self._started = False
        self._finished = False
        self._failed = False
        self._open_block: int | None = None
        self._open_is_text = False
        self._next_block = 0
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool call index -> block index
        self._open_tool_call: int | None = None
        self._finish_reason: str | None = None
        self._saw_finish_reason = False
        self._usage: Usage | None = None

    @property
    def finished(self) -> bool:
        """True once message_stop (or an error event) has been emitted."""
        return self._finished

    @property
    def failed(self) -> bool:
        """True when the stream carried an error instead of an answer."""
        return self._failed

    @property
    def usage_reported(self) -> bool:
        return self._usage is not None

    def feed(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        if self._finished:
            return []
        events: list[StreamEvent] = []

        error = chunk.get("error")
        if error is not None:
            self._finished = True
            self._failed = True
            return [_error_event(error, self._provider)]

        if not self._started:
            events.append(self._message_start(chunk))

        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # only one choice (n=1) is ever requested
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("refusal")
            if text:
                events.extend(self._text(text))
            for tool_call in delta.get("tool_calls") or []:
                events.extend(self._tool_call(tool_call))
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                self._saw_finish_reason = True

        if chunk.get("usage"):
            self._usage = usage_from_openai(chunk["usage"])

        if self._saw_finish_reason and self._usage is not None:
            events.extend(self._end())
        return events

    def finish(self) -> list[StreamEvent]:
        """The closing events, on `[DONE]` or at the end of the stream.

        A stream that never said why it finished was cut short: that is an UpstreamError,
        so the gateway stores the turn as interrupted instead of as a complete answer.
        """
        if self._finished:
            return []
        if not self._saw_finish_reason:
            raise UpstreamError(f"the {self._provider} stream ended before its finish_reason")
        return self._end()

    def _message_start(self, chunk: dict[str, Any]) -> StreamEvent:
        self._started = True
        return {
            "type": "message_start",
            "message": {
                "id": chunk.get("id", ""),
                "type": "message",
                "role": "assistant",
                "model": chunk.get("model") or self._model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        }

    def _text(self, text: str) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if self._open_block is None or not self._open_is_text:
            events.extend(self._close_open_block())
            events.append(self._start_block({"type": "text", "text": ""}, is_text=True))
        events.append(
            {
                "type": "content_block_delta",
                "index": self._open_block,
                "delta": {"type": "text_delta", "text": text},
            }
        )
        return events

    def _tool_call(self, tool_call: dict[str, Any]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        call_index = tool_call.get("index", 0)
        function = tool_call.get("function") or {}

        if call_index not in self._tool_blocks:
            name = function.get("name")
            if not name:
                raise UpstreamError(f"the {self._provider} stream sent a tool call with no name")
            events.extend(self._close_open_block())
            block = {
                "type": "tool_use",
                "id": tool_call.get("id") or new_tool_use_id(),
                "name": name,
                "input": {},
            }
            events.append(self._start_block(block, is_text=False))
            self._tool_blocks[call_index] = self._open_block  # type: ignore[assignment]
            self._open_tool_call = call_index
        elif call_index != self._open_tool_call or self._open_is_text:
            # Anthropic blocks cannot be reopened once stopped; no known server interleaves.
            raise UpstreamError(
                f"the {self._provider} stream interleaved the arguments of parallel tool calls"
            )

        arguments = function.get("arguments")
        if arguments:
            events.append(
                {
                    "type": "content_block_delta",
                    "index": self._open_block,
                    "delta": {"type": "input_json_delta", "partial_json": arguments},
                }
            )
        return events

    def _start_block(self, block: Block, *, is_text: bool) -> StreamEvent:
        self._open_block = self._next_block
        self._open_is_text = is_text
        self._next_block += 1
        return {"type": "content_block_start", "index": self._open_block, "content_block": block}

    def _close_open_block(self) -> list[StreamEvent]:
        if self._open_block is None:
            return []
        event = {"type": "content_block_stop", "index": self._open_block}
        self._open_block = None
        self._open_tool_call = None
        return [event]

    def _end(self) -> list[StreamEvent]:
        self._finished = True
        usage = self._usage or Usage()
        return [
            *self._close_open_block(),
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": stop_reason(self._finish_reason, bool(self._tool_blocks)),
                    "stop_sequence": None,
                },
                "usage": usage.as_dict(),
            },
            {"type": "message_stop"},
        ]


def _error_event(error: Any, provider: str) -> StreamEvent:
    message = error.get("message") if isinstance(error, dict) else error
    if not isinstance(message, str) or not message:
        message = "no error message"
    return {
        "type": "error",
        "error": {"type": "api_error", "message": f"the {provider} stream failed: {message}"},
    }
