"""Request bodies at the HTTP edge. Strict types: a mistyped field is a 400 that names
the field and the value, never a silent coercion."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from serve_app.budget import BudgetPeriod
from serve_app.stores.keys import KeyScope

MAX_NAME_CHARS = 200
MAX_ID_CHARS = 256


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextBlockIn(_Body):
    type: Literal["text"]
    text: Annotated[StrictStr, Field(min_length=1)]


class Base64ImageSource(_Body):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: Annotated[StrictStr, Field(min_length=1)]


class UrlImageSource(_Body):
    type: Literal["url"]
    url: Annotated[StrictStr, Field(pattern=r"^https?://", max_length=4096)]


class ImageBlockIn(_Body):
    type: Literal["image"]
    source: Annotated[Base64ImageSource | UrlImageSource, Field(discriminator="type")]


ContentBlockIn = Annotated[TextBlockIn | ImageBlockIn, Field(discriminator="type")]


class KeyCreate(_Body):
    name: Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_CHARS)]
    scope: KeyScope = "standard"
    max_spend_usd: Annotated[StrictFloat | StrictInt | None, Field(ge=0, le=1_000_000)] = None
    budget_period: BudgetPeriod = "month"


class KeyUpdate(_Body):
    name: Annotated[StrictStr, Field(min_length=1, max_length=MAX_NAME_CHARS)] | None = None
    max_spend_usd: Annotated[StrictFloat | StrictInt | None, Field(ge=0, le=1_000_000)] = None
    budget_period: BudgetPeriod | None = None


class ThreadCreate(_Body):
    end_user_id: Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS)] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class TurnCreate(_Body):
    model: Annotated[StrictStr, Field(min_length=1)]
    max_tokens: StrictInt
    content: (
        Annotated[StrictStr, Field(min_length=1)]
        | Annotated[list[ContentBlockIn], Field(min_length=1)]
    )
    stream: StrictBool = False
    tools: list[StrictStr] | None = None
    system: Annotated[StrictStr, Field(min_length=1)] | list[TextBlockIn] | None = None
    temperature: Annotated[StrictFloat | StrictInt, Field(ge=0, le=2)] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None

    def content_blocks(self) -> list[dict[str, Any]]:
        if isinstance(self.content, str):
            return [{"type": "text", "text": self.content}]
        return [block.model_dump() for block in self.content]

    def system_value(self) -> str | list[dict[str, Any]] | None:
        if self.system is None or isinstance(self.system, str):
            return self.system
        return [block.model_dump() for block in self.system]
