"""The model table (configs/models.yaml): provider, upstream id, window and prices."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from serve_app.errors import InvalidRequest
from serve_app.money import Prices, usd_to_micros

ProviderName = Literal["anthropic", "openai", "openai_compatible"]


class _PricesUsd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    cache_read: Decimal = Field(ge=0)
    cache_write: Decimal = Field(ge=0)


class _ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: ProviderName
    upstream_id: str
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)
    prices: _PricesUsd
    estimate_factor: Decimal = Field(Decimal("1.0"), ge=1)
    source: str


class _ModelTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, _ModelEntry]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    provider: ProviderName
    upstream_id: str
    context_window: int
    max_output_tokens: int
    prices: Prices
    estimate_factor_pct: int  # 135 for 1.35: integral, like all money-adjacent math


class Catalog:
    def __init__(self, specs: dict[str, ModelSpec]) -> None:
        self._specs = specs

    @classmethod
    def load(cls, path: Path) -> Catalog:
        table = _ModelTable.model_validate(yaml.safe_load(path.read_text()))
        specs = {}
        for name, entry in table.models.items():
            prices = Prices(
                # USD per million tokens -> micro-dollars per million tokens.
                input=usd_to_micros(entry.prices.input),
                output=usd_to_micros(entry.prices.output),
                cache_read=usd_to_micros(entry.prices.cache_read),
                cache_write=usd_to_micros(entry.prices.cache_write),
            )
            specs[name] = ModelSpec(
                name=name,
                provider=entry.provider,
                upstream_id=entry.upstream_id,
                context_window=entry.context_window,
                max_output_tokens=entry.max_output_tokens,
                prices=prices,
                estimate_factor_pct=int(entry.estimate_factor * 100),
            )
        return cls(specs)

    def get(self, name: str) -> ModelSpec:
        spec = self._specs.get(name)
        if spec is None:
            known = ", ".join(sorted(self._specs))
            raise InvalidRequest(f"model: unknown model {name!r}; known models: {known}")
        return spec

    def names(self) -> list[str]:
        return sorted(self._specs)
