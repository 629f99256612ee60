from decimal import Decimal

from serve_app.canonical import Usage
from serve_app.money import Prices, cost_of, usd_to_micros, worst_case_micros

SONNET = Prices(input=3_000_000, output=15_000_000, cache_read=300_000, cache_write=3_750_000)


def test_usd_to_micros_is_exact_for_floats_and_decimals():
    assert usd_to_micros(5.0) == 5_000_000
    assert usd_to_micros(0.1) == 100_000
    assert usd_to_micros(Decimal("0.075")) == 75_000
    assert usd_to_micros("0.0000005") == 1


def test_cost_applies_markup_before_rounding_once():
    usage = Usage(input_tokens=12, output_tokens=31)
    cost = cost_of(usage, SONNET, markup_bp=10_700)
    # 12 x 3 + 31 x 15 = 501 micro-dollars upstream; x 1.07 = 536.07 -> 536.
    assert cost.upstream_cost_micros == 501
    assert cost.cost_micros == 536


def test_cost_rounds_half_up_and_counts_cache_tokens():
    prices = Prices(input=750_000, output=4_500_000, cache_read=75_000, cache_write=750_000)
    usage = Usage(input_tokens=2, output_tokens=0, cache_read_input_tokens=10)
    # 2 x 0.75 + 10 x 0.075 = 2.25 micro-dollars -> 2; x 1.07 = 2.4075 -> 2.
    assert cost_of(usage, prices, 10_700).upstream_cost_micros == 2
    usage = Usage(input_tokens=2)
    # 1.5 -> 2 (half up)
    assert cost_of(usage, prices, 10_000).upstream_cost_micros == 2


def test_worst_case_rounds_up_and_prices_input_at_the_dearer_rate():
    # 10 x 3.75 + 100 x 15 = 1537.5; x 1.07 = 1645.125 -> 1646
    assert worst_case_micros(10, 100, SONNET, 10_700) == 1646
