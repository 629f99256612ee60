"""Request bodies at the HTTP edge. Strict types: a mistyped field is a 400 that names
the field and the value, never a silent coercion."""

from __future__ import annotations

import binascii
from base64 import b64decode
from decimal import Decimal
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)
from pydantic_core import PydanticCustomError

from serve_app.budget import BudgetPeriod
from serve_app.money import MICROS_PER_USD
from serve_app.stores.keys import KeyScope

MAX_NAME_CHARS = 200
MAX_ID_CHARS = 256
MAX_METADATA_BYTES = 16 * 1024
MAX_SPEND_USD = 1_000_000
# BSON integers are 64-bit: a larger one would reach MongoDB only to be refused there.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _not_blank(text: str) -> str:
    # Providers refuse text blocks without a visible character, so such a message would
    # break every later turn of its thread.
    if not text.strip():
        raise PydanticCustomError("blank_text", "must contain non-whitespace text")
    return text


def _base64(data: str) -> str:
    try:
        b64decode(data, validate=True)
    except binascii.Error:
        raise PydanticCustomError("invalid_base64", "must be base64-encoded image bytes") from None
    return data


def _whole_micros(usd: float | int | None) -> float | int | None:
    if usd is not None and (Decimal(str(usd)) * MICROS_PER_USD) % 1:
        raise PydanticCustomError(
            "fractional_micros", "must be a whole number of micro-dollars (at most 6 decimals)"
        )
    return usd


def _storable(value: Any, path: str) -> None:
    """Refuse what MongoDB cannot store: NUL in a key, a `$` key, an integer over 64 bits."""
    if isinstance(value, dict):
        for name, item in value.items():
            if "\x00" in name or name.startswith("$"):
                raise PydanticCustomError(
                    "invalid_metadata",
                    "key {key} at {path} may not start with $ or contain NUL",
                    {"key": repr(name), "path": path or "the top level"},
                )
            _storable(item, f"{path}.{name}" if path else name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _storable(item, f"{path}.{index}")
    elif isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise PydanticCustomError(
            "invalid_metadata", "integer at {path} does not fit in 64 bits", {"path": path}
        )


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    _storable(value, "")
    size = len(orjson.dumps(value))
    if size > MAX_METADATA_BYTES:
        raise PydanticCustomError(
            "metadata_too_large",
            "must be at most {limit} bytes as JSON, got {size}",
            {"limit": MAX_METADATA_BYTES, "size": size},
        )
    return value


NonBlankStr = Annotated[StrictStr, AfterValidator(_not_blank)]
Metadata = Annotated[dict[str, Any], AfterValidator(_metadata)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_CHARS)]
SpendUsd = Annotated[
    StrictFloat | StrictInt, Field(ge=0, le=MAX_SPEND_USD), AfterValidator(_whole_micros)
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextBlockIn(_Body):
    type: Literal["text"]
    text: NonBlankStr


class Base64ImageSource(_Body):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: Annotated[StrictStr, Field(min_length=1), AfterValidator(_base64)]


class UrlImageSource(_Body):
    type: Literal["url"]
    url: Annotated[StrictStr, Field(pattern=r"^https?://", max_length=4096)]


class ImageBlockIn(_Body):
    type: Literal["image"]
    source: Annotated[Base64ImageSource | UrlImageSource, Field(discriminator="type")]


ContentBlockIn = Annotated[TextBlockIn | ImageBlockIn, Field(discriminator="type")]


class KeyCreate(_Body):
    name: Name
    scope: KeyScope = "standard"
    max_spend_usd: SpendUsd | None = None
    budget_period: BudgetPeriod = "month"


class KeyUpdate(_Body):
    name: Name | None = None
    max_spend_usd: SpendUsd | None = None  # null removes the cap
    budget_period: BudgetPeriod | None = None

    @field_validator("name", "budget_period")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Runs only for fields the body names, so a null here was sent on purpose.
        if value is None:
            raise PydanticCustomError("null_field", "may not be null; leave it out to keep it")
        return value


class ThreadCreate(_Body):
    end_user_id: Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS)] | None = None
    metadata: Metadata = Field(default_factory=dict)


class TurnCreate(_Body):
    model: Annotated[StrictStr, Field(min_length=1)]
    max_tokens: StrictInt
    content: NonBlankStr | Annotated[list[ContentBlockIn], Field(min_length=1)]
    stream: StrictBool = False
    # Accepted in any shape, so the turn gets the clear "not available" answer.
    tools: list[Any] | None = None
    system: NonBlankStr | list[TextBlockIn] | None = None
    temperature: Annotated[StrictFloat | StrictInt, Field(ge=0, le=2)] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: Metadata | None = None

    def content_blocks(self) -> list[dict[str, Any]]:
        if isinstance(self.content, str):
            return [{"type": "text", "text": self.content}]
        return [block.model_dump() for block in self.content]

    def system_value(self) -> str | list[dict[str, Any]] | None:
        if self.system is None or isinstance(self.system, str):
            return self.system
        return [block.model_dump() for block in self.system]
