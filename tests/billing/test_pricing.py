"""The price list an operator publishes, and the exact charges computed from it."""

from __future__ import annotations

import ast
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing import money, pricing
from billing.pricing import ModelRefused, PriceFileError, PriceList, UnknownModel

PRICES = PriceList.load()

# OpenAI's list prices, USD per 1M tokens (input, cached input, output), and context windows.
OPENAI_LIST = {
    "gpt-4o": ("2.50", "1.25", "10.00", 128_000),
    "gpt-4o-mini": ("0.15", "0.075", "0.60", 128_000),
    "gpt-4.1": ("2.00", "0.50", "8.00", 1_047_576),
    "gpt-4.1-mini": ("0.40", "0.10", "1.60", 1_047_576),
    "o3": ("2.00", "0.50", "8.00", 200_000),
    "o4-mini": ("1.10", "0.275", "4.40", 200_000),
    "gpt-5": ("1.25", "0.125", "10.00", 400_000),
    "gpt-5-mini": ("0.25", "0.025", "2.00", 400_000),
    "gpt-5-nano": ("0.05", "0.005", "0.40", 400_000),
}


def credits_per_token(usd_per_million: str) -> Fraction:
    """1x the USD list price at 7.1 CNY/USD: USD x 7.1 x 10,000 credits / 1e6 tokens."""
    return Fraction(Decimal(usd_per_million)) * Fraction("7.1") * 10_000 / 10**6


# --- the published list --------------------------------------------------------------------


def test_gpt35_costs_004_credits_per_token_in_and_out() -> None:
    price = PRICES.get("gpt-3.5-turbo")
    assert (price.input, price.output) == (40, 40)  # credits per 1K tokens
    assert PRICES.chat_cost("gpt-3.5-turbo", 1, 0) == 40  # 0.04 credits = 40 millicredits
    assert PRICES.chat_cost("gpt-3.5-turbo", 0, 1) == 40


def test_gpt4_is_the_8k_model_at_the_published_231_and_426() -> None:
    price = PRICES.get("gpt-4")
    assert price.context_window == 8192
    assert (price.input, price.output) == (2310, 4260)
    assert money.format_credits(PRICES.chat_cost("gpt-4", 1, 1)) == "6.57"
    # The published input figure is kept although 0.03 USD x 7.1 would be 2.13 per token.
    assert credits_per_token(str(price.usd_input)) * 1000 == 2130 != price.input
    assert credits_per_token(str(price.usd_output)) * 1000 == price.output


@pytest.mark.parametrize("model", ["gpt-4-32k", "GPT-4-32K", "gpt-4-32k-0613"])
def test_gpt4_32k_is_refused_with_a_clear_message(model: str) -> None:
    with pytest.raises(ModelRefused, match="only the 8K gpt-4"):
        PRICES.get(model)
    with pytest.raises(UnknownModel):
        PRICES.chat_cost(model, 10, 10)


@pytest.mark.parametrize("model", ["gpt-4-turbo", "gpt-4o-2024-05-13", "gpt-5-pro", "davinci"])
def test_a_model_without_a_price_is_refused_not_guessed(model: str) -> None:
    with pytest.raises(UnknownModel, match="refused rather than charged at a guessed price"):
        PRICES.get(model)


def test_midjourney_costs_2000_credits_per_image_upscales_included() -> None:
    for action in ("imagine", "variation", "reroll", "upscale"):
        assert PRICES.image_cost(action) == 2_000_000
        assert money.format_cny(PRICES.image_cost(action)) == "0.2"
    with pytest.raises(UnknownModel):
        PRICES.image_cost("zoom")


# --- 1x OpenAI's USD list price ------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(OPENAI_LIST))
def test_newer_models_are_priced_at_1x_the_usd_list_at_71(model: str) -> None:
    usd_in, usd_cached, usd_out, context = OPENAI_LIST[model]
    price = PRICES.get(model)
    assert price.basis == "usd"
    assert price.encoding == "o200k_base"
    assert price.context_window == context
    assert (price.usd_input, price.usd_cached_input, price.usd_output) == (
        Decimal(usd_in),
        Decimal(usd_cached),
        Decimal(usd_out),
    )
    # Credits per 1K tokens in the file == the derivation, exactly.
    assert price.input == credits_per_token(usd_in) * 1000
    assert price.cached_input == credits_per_token(usd_cached) * 1000
    assert price.output == credits_per_token(usd_out) * 1000


def test_a_usd_based_price_that_does_not_match_its_list_price_is_refused() -> None:
    text = Path(pricing.SHIPPED_PRICES).read_text().replace('input = "177.5"', 'input = "180"')
    with pytest.raises(PriceFileError, match=r"models\.gpt-4o\.input.*177\.5"):
        PriceList.from_toml(text, source="edited.toml")


@pytest.mark.parametrize(
    ("alias", "model"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-5-nano-2025-08-07", "gpt-5-nano"),
    ],
)
def test_dated_snapshots_resolve_only_through_the_alias_list(alias: str, model: str) -> None:
    assert PRICES.get(alias) is PRICES.get(model)
    assert PRICES.aliases()[alias] == model


def test_gpt35_0301_has_its_own_entry_and_counting_rule() -> None:
    price = PRICES.get("gpt-3.5-turbo-0301")
    assert price.name == "gpt-3.5-turbo-0301"
    assert (price.tokens_per_message, price.tokens_per_name) == (4, -1)
    assert PRICES.get("gpt-3.5-turbo").tokens_per_message == 3


def test_every_chat_model_names_its_encoding() -> None:
    cl100k = {"gpt-3.5-turbo", "gpt-3.5-turbo-0301", "gpt-4"}
    for price in PRICES.chat_models():
        assert price.encoding == ("cl100k_base" if price.name in cl100k else "o200k_base")


# --- charges -------------------------------------------------------------------------------


def test_a_charge_is_exact_and_rounded_up_once() -> None:
    # gpt-5-nano cached input: 0.355 millicredits per token.
    assert PRICES.chat_cost("gpt-5-nano", 1, 0, cached_tokens=1) == 1
    # Three cached tokens are 1.065 millicredits -> 2, not 3 (no per-token rounding).
    assert PRICES.chat_cost("gpt-5-nano", 3, 0, cached_tokens=3) == 2
    # 1 input (3.55) + 1 output (28.4) = 31.95 -> 32.
    assert PRICES.chat_cost("gpt-5-nano", 1, 1) == 32
    assert PRICES.chat_cost("gpt-4o", 0, 0) == 0


def test_cached_tokens_are_part_of_the_prompt_and_cost_the_cached_price() -> None:
    # gpt-4o: 500 fresh x 177.5 + 500 cached x 88.75 + 1000 out x 710.
    assert PRICES.chat_cost("gpt-4o", 1000, 1000, cached_tokens=500) == 843_125
    assert money.format_credits(843_125) == "843.125"
    # A model without a cached price bills cached tokens at the input price.
    assert PRICES.chat_cost("gpt-4", 100, 0, cached_tokens=60) == PRICES.chat_cost("gpt-4", 100, 0)


@pytest.mark.parametrize(
    ("prompt", "completion", "cached"),
    [(10, 10, 11), (-1, 0, 0), (0, -1, 0), (5, 5, -1), (True, 0, 0), (1.0, 0, 0)],
)
def test_impossible_token_counts_are_refused(prompt: int, completion: int, cached: int) -> None:
    with pytest.raises(ValueError):
        PRICES.chat_cost("gpt-4o", prompt, completion, cached)


@given(
    model=st.sampled_from([m.name for m in PRICES.chat_models()]),
    budget=st.integers(min_value=0, max_value=10**9),
    prompt=st.integers(min_value=0, max_value=200_000),
)
def test_max_completion_tokens_is_the_longest_reply_the_budget_pays_for(
    model: str, budget: int, prompt: int
) -> None:
    k = PRICES.max_completion_tokens(model, budget, prompt)
    if PRICES.chat_cost(model, prompt, 0) > budget:
        assert k == 0
    else:
        assert PRICES.chat_cost(model, prompt, k) <= budget
        assert PRICES.chat_cost(model, prompt, k + 1) > budget


def fraction_cost(price: pricing.ModelPrice, prompt: int, completion: int, cached: int) -> int:
    """The charge by its definition: the exact Fraction sum, rounded up once."""
    assert price.input is not None and price.output is not None
    cached_price = price.input if price.cached_input is None else price.cached_input
    exact = (prompt - cached) * price.input + cached * cached_price + completion * price.output
    return -(-exact.numerator // exact.denominator)


def fraction_max_completion(price: pricing.ModelPrice, budget: int, prompt: int) -> int:
    assert price.input is not None and price.output is not None
    left = Fraction(budget) - prompt * price.input
    return 0 if left <= 0 else int(left // price.output)


# Prices as an operator may write them: up to 6 decimals of a credit per 1K tokens.
_PRICE = st.decimals(min_value=0, max_value=100_000, places=6, allow_nan=False).map(Fraction)


@given(
    input_price=_PRICE,
    output_price=_PRICE.filter(lambda p: p > 0),
    cached_price=st.none() | _PRICE,
    prompt=st.integers(min_value=0, max_value=2_000_000),
    completion=st.integers(min_value=0, max_value=2_000_000),
    cached_share=st.fractions(min_value=0, max_value=1),
    budget=st.integers(min_value=0, max_value=10**12),
)
def test_integer_cost_is_the_exact_fraction_cost(
    input_price: Fraction,
    output_price: Fraction,
    cached_price: Fraction | None,
    prompt: int,
    completion: int,
    cached_share: Fraction,
    budget: int,
) -> None:
    """chat_cost and max_completion_tokens run on integers over a common denominator: the same
    numbers as the Fraction arithmetic that defines them, for any prices and counts."""
    price = pricing.ModelPrice(
        name="m",
        kind="chat",
        context_window=8192,
        encoding="cl100k_base",
        input=input_price,
        cached_input=cached_price,
        output=output_price,
    )
    cached = int(prompt * cached_share)
    assert price.chat_cost(prompt, completion, cached) == fraction_cost(
        price, prompt, completion, cached
    )
    assert price.chat_cost(prompt, completion) == fraction_cost(price, prompt, completion, 0)
    assert price.max_completion_tokens(budget, prompt) == fraction_max_completion(
        price, budget, prompt
    )


@given(
    model=st.sampled_from([m.name for m in PRICES.chat_models()]),
    prompt=st.integers(min_value=0, max_value=2_000_000),
    completion=st.integers(min_value=0, max_value=2_000_000),
    cached=st.integers(min_value=0, max_value=2_000_000),
)
def test_shipped_prices_charge_the_exact_fraction_cost(
    model: str, prompt: int, completion: int, cached: int
) -> None:
    price = PRICES.get(model)
    cached = min(cached, prompt)
    assert price.chat_cost(prompt, completion, cached) == fraction_cost(
        price, prompt, completion, cached
    )


def test_a_chat_model_without_prices_is_refused_not_divided_by_zero() -> None:
    bare = pricing.ModelPrice(name="bare", kind="chat", context_window=8192)
    with pytest.raises(UnknownModel):
        bare.chat_cost(1, 1)
    with pytest.raises(UnknownModel):
        bare.max_completion_tokens(1000, 1)
    image = PRICES.get("midjourney")
    with pytest.raises(UnknownModel):
        image.chat_cost(1, 1)


def test_max_completion_tokens_examples() -> None:
    # gpt-4: 10 prompt tokens are 23.1 credits; 100 credits leave 76.9 -> 18 x 4.26.
    assert PRICES.max_completion_tokens("gpt-4", 100_000, 10) == 18
    assert PRICES.max_completion_tokens("gpt-4", 23_099, 10) == 0
    with pytest.raises(ModelRefused):
        PRICES.max_completion_tokens("gpt-4-32k", 100_000, 10)


# --- the operator's own file (PRICES_FILE) ---------------------------------------------------

OWN_FILE = """
[models."gpt-4o"]
encoding = "o200k_base"
context_window = 128000
input = 200
output = 800.5
aliases = ["my-4o"]

[images.midjourney]
imagine = 1500
variation = 1500
reroll = 1500
upscale = 0.5
"""


def test_an_operators_file_replaces_the_shipped_one_entirely(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(OWN_FILE)
    prices = PriceList.load(path)
    assert prices.source == str(path)
    assert [m.name for m in prices.chat_models()] == ["gpt-4o"]
    assert prices.get("my-4o").output == Fraction("800.5")  # a TOML float, read exactly
    assert prices.chat_cost("gpt-4o", 1, 1) == 1001  # 1000.5 -> 1001
    assert prices.image_cost("upscale") == 500
    with pytest.raises(UnknownModel):
        prices.get("gpt-3.5-turbo")  # not in the operator's file: refused


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t + "\n[[", "not valid TOML"),
        (lambda t: t.replace("output = 800.5\n", ""), r"gpt-4o\.output: missing"),
        (lambda t: t.replace("output = 800.5", 'output = "a lot"'), r"gpt-4o\.output"),
        (lambda t: t.replace("input = 200", "input = -1"), "must not be negative"),
        (lambda t: t.replace("output = 800.5", "output = 0"), "must be positive"),
        (lambda t: t.replace("o200k_base", "p50k_base"), r"gpt-4o\.encoding"),
        (lambda t: t.replace("context_window = 128000", "context_window = 0"), "context_window"),
        (lambda t: t.replace("upscale = 0.5", "upscale = 0.0005"), "at most 3 decimals"),
        (lambda t: t.replace("upscale = 0.5\n", ""), r"midjourney\.upscale: missing"),
        (lambda t: t.replace("input = 200", "input = 200\nprice = 3"), "unknown field"),
        (lambda t: t.replace('["my-4o"]', '["gpt-4o"]'), "also a model"),
        (lambda t: t + '\n[refused]\n"my-4o" = "no"\n', "also priced"),
        (lambda t: t.replace("[models", "basis = 1\n[models"), "unknown table"),
        (lambda t: t.replace('context_window = 128000', 'basis = "usd"\ncontext_window = 1'),
         "cny_per_usd"),
    ],
)  # fmt: skip
def test_a_malformed_price_file_is_refused_with_the_field_named(
    tmp_path: Path, edit: object, message: str
) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(edit(OWN_FILE))  # type: ignore[operator]
    with pytest.raises(PriceFileError, match=message) as caught:
        PriceList.load(path)
    assert str(path) in str(caught.value)


def test_a_missing_price_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PriceFileError, match="cannot read price file"):
        PriceList.load(tmp_path / "nope.toml")


def test_no_float_in_the_money_code() -> None:
    """Money is integers and exact ratios: no float literal or float() in these modules."""
    for module in (money, pricing):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        for node in ast.walk(tree):
            assert not (isinstance(node, ast.Constant) and isinstance(node.value, float)), module
            assert not (isinstance(node, ast.Name) and node.id == "float"), module
