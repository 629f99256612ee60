"""OpenAI Chat Completions on the wire: request checks, completion JSON, SSE chunks, errors.

Checks mirror the ones the real API makes that an adapter could trip over: required
fields, message and part shapes, unknown arguments, and every `tool_calls` entry being
answered by a `tool` message before the conversation moves on
(https://platform.openai.com/docs/api-reference/chat).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from serve_app.sandbox.answer import Answer, Conversation, ToolResult, ToolUse
from serve_app.sandbox.wire import InvalidWireRequest, WireRequest, json_deltas, text_deltas

COMPLETION_ID_PREFIX = "chatcmpl-sbx"
TOOL_CALL_ID_PREFIX = "call_sbx_"
TEMPERATURE_MAX = 2.0

KNOWN_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "temperature",
        "top_p",
        "stream",
        "stream_options",
        "stop",
        "n",
        "seed",
        "user",
        "metadata",
        "store",
        "response_format",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "reasoning_effort",
        "service_tier",
        "prediction",
        "modalities",
        "audio",
        "safety_identifier",
        "prompt_cache_key",
        "verbosity",
    }
)
ROLES = ("system", "developer", "user", "assistant", "tool")
USER_PART_TYPES = ("text", "image_url", "input_audio", "file")
ASSISTANT_PART_TYPES = ("text", "refusal")
TOOL_CHOICE_MODES = ("none", "auto", "required")

FINISH_REASONS = {"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls"}

# (type, code) of the error body per status, as OpenAI words them.
ERROR_KINDS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


class OpenAIWire:
    api = "openai"

    def read_request(self, body: Any) -> WireRequest:
        if not isinstance(body, dict):
            raise InvalidWireRequest("the request body must be a JSON object")
        unknown = sorted(set(body) - KNOWN_FIELDS)
        if unknown:
            raise InvalidWireRequest(
                f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0]
            )

        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidWireRequest(
                f"model: you must provide a model name as a string, got {model!r}", param="model"
            )
        max_tokens = _read_max_tokens(body)
        stream, include_usage = _read_stream(body)
        _check_sampling(body)

        tools = _read_tools(body.get("tools"))
        conversation = _read_messages(body.get("messages"), max_tokens)
        conversation.declared_tools = frozenset(tool["name"] for tool in tools)

        # Counted in the Anthropic tool shape, so the same tools cost the same input tokens
        # on both wires.
        if tools:
            conversation.prompt_pieces.append(orjson.dumps(tools).decode())

        return WireRequest(
            model=model, stream=stream, conversation=conversation, include_usage=include_usage
        )

    def render_message(self, answer: Answer, request: WireRequest) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": answer.text or None}
        if answer.tool_uses:
            message["tool_calls"] = [_tool_call(use) for use in answer.tool_uses]
        message["refusal"] = None

        return {
            "id": COMPLETION_ID_PREFIX + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": FINISH_REASONS[answer.stop_reason],
                    "logprobs": None,
                }
            ],
            "usage": _usage(answer),
        }

    def render_stream(self, answer: Answer, request: WireRequest) -> list[bytes]:
        header = {
            "id": COMPLETION_ID_PREFIX + secrets.token_hex(12),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.model,
        }

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            payload: dict[str, Any] = {**header, "choices": [choice]}
            # With include_usage, OpenAI sends "usage": null on every chunk but the last.
            if request.include_usage:
                payload["usage"] = None
            return _data(payload)

        chunks = [chunk({"role": "assistant", "content": ""})]
        chunks.extend(chunk({"content": piece}) for piece in text_deltas(answer.text))
        for index, use in enumerate(answer.tool_uses):
            chunks.extend(chunk({"tool_calls": [delta]}) for delta in _tool_call_deltas(index, use))
        chunks.append(chunk({}, FINISH_REASONS[answer.stop_reason]))

        if request.include_usage:
            chunks.append(_data({**header, "choices": [], "usage": _usage(answer)}))
        chunks.append(b"data: [DONE]\n\n")
        return chunks

    def render_error(self, status: int, message: str, param: str | None = None) -> dict[str, Any]:
        error_type, code = ERROR_KINDS.get(
            status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
        )
        return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _read_max_tokens(body: dict[str, Any]) -> int:
    # max_completion_tokens replaced max_tokens; an adapter may send either.
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    value = body.get(name)
    if value is None:
        raise InvalidWireRequest(
            "max_completion_tokens: Field required (or the older max_tokens)",
            param="max_completion_tokens",
        )
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidWireRequest(
            f"{name}: must be an integer of at least 1, got {value!r}", param=name
        )
    return value


def _read_stream(body: dict[str, Any]) -> tuple[bool, bool]:
    """Whether to stream, and whether to end the stream with a usage chunk."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidWireRequest(f"stream: must be a boolean, got {stream!r}", param="stream")

    options = body.get("stream_options")
    if options is None:
        return stream is True, False
    if stream is not True:
        raise InvalidWireRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    if not isinstance(options, dict):
        raise InvalidWireRequest("stream_options: must be an object", param="stream_options")
    return True, options.get("include_usage") is True


def _check_sampling(body: dict[str, Any]) -> None:
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= TEMPERATURE_MAX
    ):
        raise InvalidWireRequest(
            f"temperature: must be a number from 0 to 2, got {temperature!r}", param="temperature"
        )

    tool_choice = body.get("tool_choice")
    if tool_choice is None or tool_choice in TOOL_CHOICE_MODES:
        return
    names_a_function = (
        isinstance(tool_choice, dict)
        and tool_choice.get("type") == "function"
        and isinstance(tool_choice.get("function"), dict)
        and isinstance(tool_choice["function"].get("name"), str)
    )
    if not names_a_function:
        raise InvalidWireRequest(
            "tool_choice: must be none, auto, required, or "
            '{"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )


def _read_tools(tools: Any) -> list[dict[str, Any]]:
    """The declared tools in the Anthropic shape: name, description, input_schema."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidWireRequest("tools: must be a list of function tools", param="tools")

    normalized: list[dict[str, Any]] = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise InvalidWireRequest(
                f"tools[{index}]: must be {{'type': 'function', 'function': {{...}}}}",
                param=f"tools[{index}]",
            )
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise InvalidWireRequest(
                f"tools[{index}].function.name: Field required",
                param=f"tools[{index}].function.name",
            )

        definition: dict[str, Any] = {"name": function["name"]}
        if "description" in function:
            definition["description"] = function["description"]
        definition["input_schema"] = function.get("parameters", {})
        normalized.append(definition)
    return normalized


def _read_messages(messages: Any, max_tokens: int) -> Conversation:
    if not isinstance(messages, list) or not messages:
        raise InvalidWireRequest("messages: must be a non-empty list of messages", param="messages")

    pieces: list[str] = []
    tool_names: dict[str, str] = {}
    open_tool_call_ids: list[str] = []  # from the last assistant message, awaiting tool messages
    newest_user_text = ""
    context_count = 0
    trailing_results: list[ToolResult] = []
    previous_role = ""

    for index, message in enumerate(messages):
        _check_message(index, message)
        role = message["role"]

        if role == "tool":
            _check_tool_message(index, message, open_tool_call_ids, previous_role)
            open_tool_call_ids.remove(message["tool_call_id"])
            output = _content_text(message["content"], "")
            # Consecutive tool messages are one Anthropic user message of tool_result blocks:
            # counted as one piece, so both wires report the same input_tokens.
            if previous_role == "tool":
                pieces[-1] += output
            else:
                pieces.append(output)
                trailing_results = []
            name = tool_names.get(message["tool_call_id"], message["tool_call_id"])
            trailing_results.append(ToolResult(name=name, output=output))
        else:
            if open_tool_call_ids:
                raise _unanswered_tool_calls(index, open_tool_call_ids)
            trailing_results = []
            pieces.append(_content_text(message.get("content"), ""))

        if role == "assistant":
            for call in message.get("tool_calls") or []:
                function = call["function"]
                tool_names[call["id"]] = function["name"]
                open_tool_call_ids.append(call["id"])
                pieces[-1] += function["name"] + function["arguments"]
        elif role == "user":
            newest_user_text = _content_text(message["content"], "\n")

        if role not in ("system", "developer"):
            context_count += 1
        previous_role = role

    if open_tool_call_ids:
        raise _unanswered_tool_calls(len(messages), open_tool_call_ids)

    return Conversation(
        message_count=context_count,
        newest_user_text=newest_user_text,
        max_tokens=max_tokens,
        tool_results=trailing_results,
        prompt_pieces=pieces,
    )


def _check_message(index: int, message: Any) -> None:
    where = f"messages[{index}]"
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        role = message.get("role") if isinstance(message, dict) else None
        raise InvalidWireRequest(
            f"{where}.role: must be one of {', '.join(ROLES)}, got {role!r}", param=f"{where}.role"
        )

    role = message["role"]
    content = message.get("content")
    if role == "assistant":
        tool_calls = message.get("tool_calls")
        if tool_calls is not None:
            _check_tool_calls(where, tool_calls)
        if content is None and not tool_calls:
            raise InvalidWireRequest(
                f"{where}.content: Field required when the message has no tool_calls",
                param=f"{where}.content",
            )
        if content is not None:
            _check_content(where, content, ASSISTANT_PART_TYPES)
        return

    part_types = USER_PART_TYPES if role == "user" else ("text",)
    _check_content(where, content, part_types)


def _check_content(where: str, content: Any, part_types: tuple[str, ...]) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidWireRequest(
            f"{where}.content: must be a string or a list of content parts, got {content!r}",
            param=f"{where}.content",
        )

    for part_index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in part_types:
            raise InvalidWireRequest(
                f"{where}.content[{part_index}].type: expected one of "
                f"{', '.join(part_types)}, got {kind!r}",
                param=f"{where}.content[{part_index}].type",
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            raise InvalidWireRequest(
                f"{where}.content[{part_index}].text: Field required",
                param=f"{where}.content[{part_index}].text",
            )


def _check_tool_calls(where: str, tool_calls: Any) -> None:
    if not isinstance(tool_calls, list):
        raise InvalidWireRequest(f"{where}.tool_calls: must be a list", param=f"{where}.tool_calls")

    for call_index, call in enumerate(tool_calls):
        function = call.get("function") if isinstance(call, dict) else None
        well_formed = (
            isinstance(function, dict)
            and isinstance(call.get("id"), str)
            and call.get("type") == "function"
            and isinstance(function.get("name"), str)
            and isinstance(function.get("arguments"), str)
        )
        if not well_formed:
            raise InvalidWireRequest(
                f"{where}.tool_calls[{call_index}]: must be {{'id': str, 'type': 'function', "
                "'function': {'name': str, 'arguments': str}}",
                param=f"{where}.tool_calls[{call_index}]",
            )


def _check_tool_message(
    index: int, message: dict[str, Any], open_tool_call_ids: list[str], previous_role: str
) -> None:
    where = f"messages[{index}]"
    tool_call_id = message.get("tool_call_id")
    if not isinstance(tool_call_id, str):
        raise InvalidWireRequest(
            f"{where}.tool_call_id: Field required", param=f"{where}.tool_call_id"
        )
    if previous_role not in ("assistant", "tool") or (
        previous_role == "assistant" and not open_tool_call_ids
    ):
        raise InvalidWireRequest(
            "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
            "message with 'tool_calls'.",
            param=f"{where}.role",
        )
    if tool_call_id not in open_tool_call_ids:
        raise InvalidWireRequest(
            f"Invalid parameter: 'tool_call_id' of '{tool_call_id}' not found in 'tool_calls' "
            "of previous message.",
            param=f"{where}.tool_call_id",
        )


def _unanswered_tool_calls(index: int, tool_call_ids: list[str]) -> InvalidWireRequest:
    return InvalidWireRequest(
        "An assistant message with 'tool_calls' must be followed by tool messages responding "
        "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        f"{', '.join(tool_call_ids)}",
        param=f"messages.[{index}].role",
    )


def _content_text(content: str | list[dict[str, Any]] | None, separator: str) -> str:
    """The text of a message's content; parts without text (images, audio) add nothing."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return separator.join(part.get("text") or part.get("refusal") or "" for part in content)


def _tool_call(use: ToolUse) -> dict[str, Any]:
    return {
        "id": TOOL_CALL_ID_PREFIX + use.id_hex,
        "type": "function",
        "function": {"name": use.name, "arguments": use.input_json},
    }


def _tool_call_deltas(index: int, use: ToolUse) -> list[dict[str, Any]]:
    """A tool call as OpenAI streams it: id and name first, then argument fragments."""
    first = {
        "index": index,
        "id": TOOL_CALL_ID_PREFIX + use.id_hex,
        "type": "function",
        "function": {"name": use.name, "arguments": ""},
    }
    fragments = [
        {"index": index, "function": {"arguments": fragment}}
        for fragment in json_deltas(use.input_json)
    ]
    return [first, *fragments]


def _usage(answer: Answer) -> dict[str, Any]:
    return {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"
