"""Money is integer micro-dollars. Prices are micro-dollars per million tokens.

A token priced at $3 per million costs 3 micro-dollars, so a call's exact upstream cost
is sum(tokens x price_micros_per_mtok) / 1e6 micro-dollars. Each call is rounded once,
half up, to whole micro-dollars; `cost_micros` applies the markup before that rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from serve_app.canonical import Usage

MICROS_PER_USD = 1_000_000
TOKENS_PER_MTOK = 1_000_000
BASIS_POINTS = 10_000


def usd_to_micros(usd: Decimal | float | int | str) -> int:
    """Exact conversion; a float is read through its shortest repr, so 5.0 -> 5_000_000."""
    amount = Decimal(str(usd)) * MICROS_PER_USD
    return int(amount.to_integral_value(rounding="ROUND_HALF_UP"))


def micros_to_usd(micros: int) -> float:
    return micros / MICROS_PER_USD


def _round_div(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half up, for non-negative integers."""
    return (2 * numerator + denominator) // (2 * denominator)


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


@dataclass(frozen=True, slots=True)
class Prices:
    """Micro-dollars per million tokens for each kind of token."""

    input: int
    output: int
    cache_read: int
    cache_write: int

    def weighted_tokens(self, usage: Usage) -> int:
        """sum(tokens x price): the call's cost in micro-dollars x 1e6."""
        return (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_read_input_tokens * self.cache_read
            + usage.cache_creation_input_tokens * self.cache_write
        )


@dataclass(frozen=True, slots=True)
class CallCost:
    upstream_cost_micros: int
    cost_micros: int


def cost_of(usage: Usage, prices: Prices, markup_bp: int) -> CallCost:
    weighted = prices.weighted_tokens(usage)
    return CallCost(
        upstream_cost_micros=_round_div(weighted, TOKENS_PER_MTOK),
        cost_micros=_round_div(weighted * markup_bp, TOKENS_PER_MTOK * BASIS_POINTS),
    )


def worst_case_micros(input_tokens: int, max_tokens: int, prices: Prices, markup_bp: int) -> int:
    """What a call may cost at most: every input token uncached (or written to the cache,
    whichever is dearer) and every allowed output token, with markup, rounded up."""
    input_price = max(prices.input, prices.cache_write)
    weighted = input_tokens * input_price + max_tokens * prices.output
    return _ceil_div(weighted * markup_bp, TOKENS_PER_MTOK * BASIS_POINTS)
