"""The Anthropic Messages API on the wire: request checks, message JSON, SSE events, errors.

Checks mirror the ones the real API makes that an adapter could trip over: required
fields, block shapes, unknown top-level fields, and tool_use / tool_result pairing between
neighbouring messages (https://docs.anthropic.com/en/api/messages).
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from serve_app.sandbox.answer import Answer, Conversation, ToolResult, ToolUse
from serve_app.sandbox.wire import InvalidWireRequest, WireRequest, json_deltas, text_deltas
from serve_app.tokens import content_text

MESSAGE_ID_PREFIX = "msg_sbx_"
TOOL_USE_ID_PREFIX = "toolu_sbx_"
TEMPERATURE_MAX = 1.0

KNOWN_FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "stream",
        "metadata",
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
        "context_management",
    }
)
BLOCK_TYPES = ("text", "image", "document", "tool_use", "tool_result")
TOOL_RESULT_BLOCK_TYPES = ("text", "image", "document", "search_result")
TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class AnthropicWire:
    api = "anthropic"

    def read_request(self, body: Any) -> WireRequest:
        if not isinstance(body, dict):
            raise InvalidWireRequest("the request body must be a JSON object")
        unknown = sorted(set(body) - KNOWN_FIELDS)
        if unknown:
            raise InvalidWireRequest(f"{unknown[0]}: Extra inputs are not permitted")

        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidWireRequest(f"model: Field required, a non-empty string, got {model!r}")
        max_tokens = _read_max_tokens(body.get("max_tokens"))
        _check_optional_fields(body)

        tools = _read_tools(body.get("tools"))
        conversation = _read_messages(body.get("messages"), max_tokens)
        conversation.declared_tools = frozenset(tool["name"] for tool in tools)

        # Each piece is counted on its own, the way the same conversation is counted on the
        # OpenAI wire, so both report the same input_tokens.
        system_text = _read_system(body.get("system"))
        if system_text:
            conversation.prompt_pieces.insert(0, system_text)
        if tools:
            conversation.prompt_pieces.append(orjson.dumps(tools).decode())

        return WireRequest(
            model=model, stream=body.get("stream") is True, conversation=conversation
        )

    def render_message(self, answer: Answer, request: WireRequest) -> dict[str, Any]:
        return {
            "id": MESSAGE_ID_PREFIX + secrets.token_hex(12),
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": _content_blocks(answer),
            "stop_reason": answer.stop_reason,
            "stop_sequence": None,
            "usage": _usage(answer.input_tokens, answer.output_tokens),
        }

    def render_stream(self, answer: Answer, request: WireRequest) -> list[bytes]:
        message_start = {
            "id": MESSAGE_ID_PREFIX + secrets.token_hex(12),
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(answer.input_tokens, 1),
        }
        events = [_event("message_start", {"type": "message_start", "message": message_start})]

        # The real API sends one ping right after the first content_block_start.
        text_events = _text_block_events(0, answer.text)
        events.extend([text_events[0], _event("ping", {"type": "ping"}), *text_events[1:]])
        for index, use in enumerate(answer.tool_uses, start=1):
            events.extend(_tool_use_block_events(index, use))

        message_delta = {
            "type": "message_delta",
            "delta": {"stop_reason": answer.stop_reason, "stop_sequence": None},
            "usage": _usage(answer.input_tokens, answer.output_tokens),
        }
        events.append(_event("message_delta", message_delta))
        events.append(_event("message_stop", {"type": "message_stop"}))
        return events

    def render_error(self, status: int, message: str, param: str | None = None) -> dict[str, Any]:
        error_type = ERROR_TYPES.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        return {"type": "error", "error": {"type": error_type, "message": message}}


def _read_max_tokens(value: Any) -> int:
    if value is None:
        raise InvalidWireRequest("max_tokens: Field required")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidWireRequest(f"max_tokens: must be an integer of at least 1, got {value!r}")
    return value


def _check_optional_fields(body: dict[str, Any]) -> None:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidWireRequest(f"stream: must be a boolean, got {stream!r}")

    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= TEMPERATURE_MAX
    ):
        raise InvalidWireRequest(f"temperature: must be a number from 0 to 1, got {temperature!r}")

    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidWireRequest(f"metadata: must be an object, got {metadata!r}")

    tool_choice = body.get("tool_choice")
    if tool_choice is None:
        return
    if not isinstance(tool_choice, dict) or tool_choice.get("type") not in TOOL_CHOICE_TYPES:
        raise InvalidWireRequest(
            f"tool_choice: must be an object whose type is one of {', '.join(TOOL_CHOICE_TYPES)}"
        )
    if tool_choice["type"] == "tool" and not isinstance(tool_choice.get("name"), str):
        raise InvalidWireRequest("tool_choice.name: Field required when tool_choice.type is tool")


def _read_system(system: Any) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    if not isinstance(system, list):
        raise InvalidWireRequest("system: must be a string or a list of text blocks")

    for index, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise InvalidWireRequest(f"system.{index}: must be a text block")
        if not isinstance(block.get("text"), str):
            raise InvalidWireRequest(f"system.{index}.text: Field required")
    return content_text(system)


def _read_tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidWireRequest("tools: must be a list of tool definitions")

    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise InvalidWireRequest(f"tools.{index}.name: Field required")
        # Server tools (web search and the like) carry a versioned type and no schema.
        is_custom = tool.get("type", "custom") == "custom"
        if is_custom and not isinstance(tool.get("input_schema"), dict):
            raise InvalidWireRequest(f"tools.{index}.input_schema: Field required")
    return tools


def _read_messages(messages: Any, max_tokens: int) -> Conversation:
    if not isinstance(messages, list) or not messages:
        raise InvalidWireRequest("messages: must be a non-empty list of messages")

    pieces: list[str] = []
    tool_names: dict[str, str] = {}
    open_tool_use_ids: list[str] = []  # from the previous message, to be answered in this one
    newest_user: dict[str, Any] | None = None

    for index, message in enumerate(messages):
        is_last = index == len(messages) - 1
        blocks = _read_message(index, message, is_last)
        _check_tool_pairing(index, blocks, open_tool_use_ids)

        open_tool_use_ids = []
        if message["role"] == "assistant":
            for block in blocks:
                if block["type"] == "tool_use":
                    tool_names[block["id"]] = block["name"]
                    open_tool_use_ids.append(block["id"])
        else:
            newest_user = message

        pieces.append(content_text(message["content"]))

    if open_tool_use_ids:
        raise _unanswered_tool_uses(len(messages) - 1, open_tool_use_ids)

    newest_blocks = _as_blocks(newest_user["content"]) if newest_user else []
    return Conversation(
        message_count=len(messages),
        newest_user_text="\n".join(
            block["text"] for block in newest_blocks if block["type"] == "text"
        ),
        max_tokens=max_tokens,
        tool_results=[
            ToolResult(
                name=tool_names.get(block["tool_use_id"], block["tool_use_id"]),
                output=_result_output(block.get("content")),
                is_error=block.get("is_error") is True,
            )
            for block in newest_blocks
            if block["type"] == "tool_result"
        ],
        prompt_pieces=pieces,
    )


def _read_message(index: int, message: Any, is_last: bool) -> list[dict[str, Any]]:
    """The message's content as blocks, after checking its shape."""
    if not isinstance(message, dict):
        raise InvalidWireRequest(f"messages.{index}: must be an object with role and content")
    if message.get("role") not in ("user", "assistant"):
        raise InvalidWireRequest(
            f"messages.{index}.role: must be user or assistant, got {message.get('role')!r}"
        )

    content = message.get("content")
    if not isinstance(content, str | list):
        raise InvalidWireRequest(
            f"messages.{index}.content: must be a string or a list of content blocks"
        )
    # The real API lets only a final assistant message (a prefill) be empty.
    if not content and not (is_last and message["role"] == "assistant"):
        raise InvalidWireRequest(
            f"messages.{index}: all messages must have non-empty content except for the "
            "optional final assistant message"
        )

    blocks = _as_blocks(content)
    for block_index, block in enumerate(blocks):
        _check_block(f"messages.{index}.content.{block_index}", block)
    return blocks


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return content


def _check_block(where: str, block: Any) -> None:
    if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
        kind = block.get("type") if isinstance(block, dict) else block
        raise InvalidWireRequest(
            f"{where}.type: expected one of {', '.join(BLOCK_TYPES)}, got {kind!r}"
        )

    kind = block["type"]
    if kind == "text" and (not isinstance(block.get("text"), str) or not block["text"]):
        raise InvalidWireRequest(f"{where}: text content blocks must be non-empty")
    if kind in ("image", "document") and not isinstance(block.get("source"), dict):
        raise InvalidWireRequest(f"{where}.source: Field required")
    if kind == "tool_use":
        for name, expected in (("id", str), ("name", str), ("input", dict)):
            if not isinstance(block.get(name), expected):
                raise InvalidWireRequest(f"{where}.{name}: Field required")
    if kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            raise InvalidWireRequest(f"{where}.tool_use_id: Field required")
        _check_tool_result_content(f"{where}.content", block.get("content", ""))


def _check_tool_result_content(where: str, content: Any) -> None:
    # The real API takes a string or blocks here, never bare JSON: an adapter must turn a
    # webhook's JSON output into text itself, and is refused here as it would be there.
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidWireRequest(f"{where}: must be a string or a list of content blocks")

    for index, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in TOOL_RESULT_BLOCK_TYPES:
            raise InvalidWireRequest(
                f"{where}.{index}.type: expected one of {', '.join(TOOL_RESULT_BLOCK_TYPES)}, "
                f"got {kind!r}"
            )
        if kind == "text" and not isinstance(block.get("text"), str):
            raise InvalidWireRequest(f"{where}.{index}.text: Field required")


def _check_tool_pairing(
    index: int, blocks: list[dict[str, Any]], open_tool_use_ids: list[str]
) -> None:
    """Each tool_use must be answered in the very next message, and only those; as the API."""
    answered: set[str] = set()
    for block_index, block in enumerate(blocks):
        if block["type"] != "tool_result":
            continue
        if block["tool_use_id"] not in open_tool_use_ids:
            raise InvalidWireRequest(
                f"messages.{index}.content.{block_index}: unexpected `tool_use_id` found in "
                f"`tool_result` blocks: {block['tool_use_id']}. Each `tool_result` block must "
                "have a corresponding `tool_use` block in the previous message."
            )
        answered.add(block["tool_use_id"])

    unanswered = [tool_use_id for tool_use_id in open_tool_use_ids if tool_use_id not in answered]
    if unanswered:
        raise _unanswered_tool_uses(index - 1, unanswered)


def _unanswered_tool_uses(index: int, tool_use_ids: list[str]) -> InvalidWireRequest:
    return InvalidWireRequest(
        f"messages.{index}: `tool_use` ids were found without `tool_result` blocks "
        f"immediately after: {', '.join(tool_use_ids)}. Each `tool_use` block must have a "
        "corresponding `tool_result` block in the next message."
    )


def _result_output(content: str | list[dict[str, Any]] | None) -> str:
    """A tool result's output as the answer quotes it: a string as given, text blocks joined."""
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(block["text"] for block in content if block["type"] == "text")


def _content_blocks(answer: Answer) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": answer.text}]
    blocks.extend(
        {
            "type": "tool_use",
            "id": TOOL_USE_ID_PREFIX + use.id_hex,
            "name": use.name,
            "input": use.input,
        }
        for use in answer.tool_uses
    )
    return blocks


def _text_block_events(index: int, text: str) -> list[bytes]:
    deltas = [{"type": "text_delta", "text": piece} for piece in text_deltas(text)]
    return _block_events(index, {"type": "text", "text": ""}, deltas)


def _tool_use_block_events(index: int, use: ToolUse) -> list[bytes]:
    start = {
        "type": "tool_use",
        "id": TOOL_USE_ID_PREFIX + use.id_hex,
        "name": use.name,
        "input": {},
    }
    deltas = [
        {"type": "input_json_delta", "partial_json": fragment}
        for fragment in json_deltas(use.input_json)
    ]
    return _block_events(index, start, deltas)


def _block_events(index: int, start: dict[str, Any], deltas: list[dict[str, Any]]) -> list[bytes]:
    events = [
        _event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        )
    ]
    events.extend(
        _event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )
        for delta in deltas
    )
    events.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
