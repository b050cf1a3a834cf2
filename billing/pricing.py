"""The price list: what each model costs, read from a TOML file the operator owns.

Chat prices are kept as exact Fractions of credits per 1K tokens, which is the same number as
millicredits per token, so a charge is `ceil(sum(tokens x price))` millicredits: computed
exactly and rounded up once. (Each chat model also keeps its prices as integer numerators over
one common denominator, so that exact sum is integer arithmetic: the same number as the
Fraction sum, at a fraction of its cost on the chat path.) A model with no price is refused,
never charged at a guess; dated snapshots reach a family's price only through the file's
explicit `aliases`.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Any

from billing.money import CREDITS_PER_CNY, MILLI_PER_CREDIT, format_decimal

SHIPPED_PRICES = Path(__file__).with_name("prices.toml")
ENCODINGS = ("cl100k_base", "o200k_base")
IMAGE_ACTIONS = ("imagine", "variation", "reroll", "upscale")
BASES = ("usd", "fixed")


class UnknownModel(ValueError):
    """The model has no price (or is refused); the message is fit for an operator."""


class ModelRefused(UnknownModel):
    """The price list names the model only to refuse it (e.g. gpt-4-32k)."""


class PriceFileError(ValueError):
    """The price file is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's prices. Chat prices: credits per 1K tokens (= millicredits per token)."""

    name: str
    kind: str  # "chat" | "image"
    context_window: int | None = None
    encoding: str | None = None
    input: Fraction | None = None
    cached_input: Fraction | None = None  # None: cached tokens cost the input price
    output: Fraction | None = None
    usd_input: Decimal | None = None  # OpenAI's list price, USD per 1M tokens
    usd_cached_input: Decimal | None = None
    usd_output: Decimal | None = None
    basis: str = "fixed"
    tokens_per_message: int = 3
    tokens_per_name: int = 1
    aliases: tuple[str, ...] = ()
    actions: Mapping[str, int] = field(default_factory=dict)  # image action -> millicredits
    note: str = ""
    # The chat prices as integers over one common denominator (0 for an image model): price =
    # _num_x / _den exactly, so a cost is one integer sum and one ceiling division.
    _den: int = field(default=0, init=False, repr=False, compare=False)
    _num_in: int = field(default=0, init=False, repr=False, compare=False)
    _num_cached: int = field(default=0, init=False, repr=False, compare=False)
    _num_out: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind != "chat" or self.input is None or self.output is None:
            return
        prices = [Fraction(self.input), Fraction(self.output)]
        prices.append(prices[0] if self.cached_input is None else Fraction(self.cached_input))
        den = math.lcm(*(p.denominator for p in prices))
        num_in, num_out, num_cached = (p.numerator * (den // p.denominator) for p in prices)
        object.__setattr__(self, "_den", den)
        object.__setattr__(self, "_num_in", num_in)
        object.__setattr__(self, "_num_out", num_out)
        object.__setattr__(self, "_num_cached", num_cached)

    def chat_cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> int:
        """Millicredits for one reply: exact sum, rounded up once.

        `cached_tokens` are part of `prompt_tokens` (as the API reports them) and cost the
        cached-input price where the model has one.
        """
        if not (
            self._den
            and type(prompt_tokens) is int
            and type(completion_tokens) is int
            and type(cached_tokens) is int
            and 0 <= cached_tokens <= prompt_tokens
            and completion_tokens >= 0
        ):  # the common case skips the checks below, which name what is wrong
            self._require_chat()
            for label, value in (
                ("prompt_tokens", prompt_tokens),
                ("completion_tokens", completion_tokens),
                ("cached_tokens", cached_tokens),
            ):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"{label} must be a non-negative integer, got {value!r}")
            if cached_tokens > prompt_tokens:
                raise ValueError(
                    f"cached_tokens ({cached_tokens}) cannot exceed prompt_tokens ({prompt_tokens})"
                )
            self._require_prices()
        scaled = (
            (prompt_tokens - cached_tokens) * self._num_in
            + cached_tokens * self._num_cached
            + completion_tokens * self._num_out
        )
        return -(-scaled // self._den)  # ceil(scaled / den), exactly

    def max_completion_tokens(self, budget_milli: int, prompt_tokens: int) -> int:
        """The largest K with chat_cost(prompt_tokens, K) <= budget_milli (0 if none).

        ceil(x) <= B exactly when x <= B for an integer B, so K = floor((B - prompt) / out).
        """
        self._require_chat()
        self._require_prices()
        if prompt_tokens < 0 or budget_milli < 0:
            raise ValueError("budget and prompt_tokens must be non-negative")
        # In units of 1/_den millicredit: floor((B - prompt x in) / out), exactly.
        left = budget_milli * self._den - prompt_tokens * self._num_in
        if left <= 0:
            return 0
        return left // self._num_out

    def _require_chat(self) -> None:
        if self.kind != "chat":
            raise UnknownModel(f"{self.name} is not a chat model")

    def _require_prices(self) -> None:
        if not self._den:
            raise UnknownModel(f"{self.name} has no input and output prices")


class PriceList:
    """Every priced model, its aliases and the refused names, from one TOML file."""

    def __init__(
        self,
        models: Mapping[str, ModelPrice],
        *,
        aliases: Mapping[str, str] | None = None,
        refused: Mapping[str, str] | None = None,
        cny_per_usd: Decimal | None = None,
        source: str = "<memory>",
    ) -> None:
        self._models = dict(models)
        self._aliases = dict(aliases or {})
        self._refused = dict(refused or {})
        self.cny_per_usd = cny_per_usd
        self.source = source

    @classmethod
    def load(cls, path: Path | str | None = None) -> PriceList:
        """Read a price file; None is the shipped `billing/prices.toml`.

        An operator's file replaces the shipped one entirely. Any problem is a PriceFileError
        naming the file and the field.
        """
        file = SHIPPED_PRICES if path is None else Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise PriceFileError(f"cannot read price file {file}: {exc.strerror or exc}") from exc
        return cls.from_toml(text, source=str(file))

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<string>") -> PriceList:
        """Parse price-file text (TOML floats are read as exact Decimals, never floats)."""
        try:
            data = tomllib.loads(text, parse_float=Decimal)
        except tomllib.TOMLDecodeError as exc:
            raise PriceFileError(f"price file {source} is not valid TOML: {exc}") from exc
        return _Parser(source).parse(data)

    # --- lookups ---------------------------------------------------------------------------

    def get(self, model: str) -> ModelPrice:
        """The price of `model` or one of its aliases; UnknownModel if it has none."""
        name = _norm(model)
        if name in self._refused:
            raise ModelRefused(f"model {name!r} is refused: {self._refused[name]}")
        name = self._aliases.get(name, name)
        price = self._models.get(name)
        if price is None:
            offered = ", ".join(m.name for m in self.chat_models())
            raise UnknownModel(
                f"model {model!r} has no price in {self.source}, so it is refused rather than "
                f"charged at a guessed price (priced: {offered})"
            )
        return price

    def chat_models(self) -> list[ModelPrice]:
        """Every priced chat model, in the file's order (aliases not repeated)."""
        return [m for m in self._models.values() if m.kind == "chat"]

    def image_models(self) -> list[ModelPrice]:
        return [m for m in self._models.values() if m.kind == "image"]

    def aliases(self) -> dict[str, str]:
        """alias -> model name."""
        return dict(self._aliases)

    def refused(self) -> dict[str, str]:
        """refused model -> reason."""
        return dict(self._refused)

    # --- charges ---------------------------------------------------------------------------

    def chat_cost(
        self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
    ) -> int:
        """Millicredits for one reply, exact and rounded up once (see ModelPrice.chat_cost)."""
        return self.get(model).chat_cost(prompt_tokens, completion_tokens, cached_tokens)

    def max_completion_tokens(self, model: str, budget_milli: int, prompt_tokens: int) -> int:
        """The longest reply (in tokens) a budget pays for after the prompt; 0 if none."""
        return self.get(model).max_completion_tokens(budget_milli, prompt_tokens)

    def image_cost(self, action: str, model: str = "midjourney") -> int:
        """Millicredits for one finished image of `action` (imagine/variation/reroll/upscale)."""
        price = self.get(model)
        if price.kind != "image":
            raise UnknownModel(f"{price.name} is not an image model")
        try:
            return price.actions[action.lower()]
        except KeyError:
            raise UnknownModel(f"{price.name} has no price for action {action!r}") from None


def _norm(name: str) -> str:
    return name.strip().lower()


class _Parser:
    """Turns the TOML tables into a PriceList, with an error that names the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> PriceFileError:
        return PriceFileError(f"price file {self.source}: {where}: {problem}")

    def parse(self, data: dict[str, Any]) -> PriceList:
        unknown = set(data) - {"exchange", "models", "refused", "images"}
        if unknown:
            raise self.fail(", ".join(sorted(unknown)), "unknown table")
        exchange = self.table(data, "exchange", "exchange")
        cny_per_usd = None
        if "cny_per_usd" in exchange:
            cny_per_usd = self.decimal(exchange["cny_per_usd"], "exchange.cny_per_usd")
            if cny_per_usd <= 0:
                raise self.fail("exchange.cny_per_usd", "must be positive")

        models: dict[str, ModelPrice] = {}
        aliases: dict[str, str] = {}
        for raw_name, table in self.table(data, "models", "models").items():
            name = _norm(raw_name)
            if name in models:
                raise self.fail(f"models.{raw_name}", "listed twice")
            price = self.chat_model(name, self.table({"t": table}, "t", f"models.{raw_name}"))
            if price.basis == "usd":
                self.check_derivation(price, cny_per_usd)
            models[name] = price
            for alias in price.aliases:
                if alias in aliases:
                    raise self.fail(f"models.{name}.aliases", f"{alias!r} is an alias twice")
                aliases[alias] = name
        for name, table in self.table(data, "images", "images").items():
            name = _norm(name)
            if name in models:
                raise self.fail(f"images.{name}", "also listed as a chat model")
            models[name] = self.image_model(name, self.table({"t": table}, "t", f"images.{name}"))
        if not any(m.kind == "chat" for m in models.values()):
            raise self.fail("models", "no chat model is priced")

        refused: dict[str, str] = {}
        for raw_name, reason in self.table(data, "refused", "refused").items():
            if not isinstance(reason, str) or not reason.strip():
                raise self.fail(f"refused.{raw_name}", "give the reason as a non-empty string")
            refused[_norm(raw_name)] = reason.strip()

        for alias, target in aliases.items():
            if alias in models:
                raise self.fail(f"models.{target}.aliases", f"{alias!r} is also a model")
        clash = (set(models) | set(aliases)) & set(refused)
        if clash:
            raise self.fail("refused", f"{', '.join(sorted(clash))} is also priced")
        return PriceList(
            models, aliases=aliases, refused=refused, cny_per_usd=cny_per_usd, source=self.source
        )

    def chat_model(self, name: str, t: dict[str, Any]) -> ModelPrice:
        where = f"models.{name}"
        allowed = {
            "basis", "note", "encoding", "context_window", "input", "cached_input", "output",
            "usd_input", "usd_cached_input", "usd_output", "tokens_per_message",
            "tokens_per_name", "aliases",
        }  # fmt: skip
        unknown = set(t) - allowed
        if unknown:
            raise self.fail(where, f"unknown field(s) {', '.join(sorted(unknown))}")
        basis = t.get("basis", "fixed")
        if basis not in BASES:
            raise self.fail(f"{where}.basis", f"must be one of {', '.join(BASES)}")
        encoding = t.get("encoding")
        if encoding not in ENCODINGS:
            raise self.fail(f"{where}.encoding", f"must be one of {', '.join(ENCODINGS)}")
        context = t.get("context_window")
        if isinstance(context, bool) or not isinstance(context, int) or context <= 0:
            raise self.fail(f"{where}.context_window", "must be a positive integer")
        for key in ("input", "output"):
            if key not in t:
                raise self.fail(f"{where}.{key}", "missing (credits per 1K tokens)")
        input_price = self.price(t["input"], f"{where}.input")
        output_price = self.price(t["output"], f"{where}.output")
        if output_price <= 0:
            raise self.fail(f"{where}.output", "must be positive")
        cached = None
        if "cached_input" in t:
            cached = self.price(t["cached_input"], f"{where}.cached_input")
        raw_aliases = t.get("aliases", [])
        if not isinstance(raw_aliases, list) or not all(
            isinstance(a, str) and a.strip() for a in raw_aliases
        ):
            raise self.fail(f"{where}.aliases", "must be a list of model names")
        per_message = t.get("tokens_per_message", 3)
        per_name = t.get("tokens_per_name", 1)
        for key, value in (("tokens_per_message", per_message), ("tokens_per_name", per_name)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(f"{where}.{key}", "must be an integer")
        return ModelPrice(
            name=name,
            kind="chat",
            context_window=context,
            encoding=encoding,
            input=input_price,
            cached_input=cached,
            output=output_price,
            usd_input=self.optional_decimal(t, "usd_input", where),
            usd_cached_input=self.optional_decimal(t, "usd_cached_input", where),
            usd_output=self.optional_decimal(t, "usd_output", where),
            basis=basis,
            tokens_per_message=per_message,
            tokens_per_name=per_name,
            aliases=tuple(_norm(a) for a in raw_aliases),
            note=str(t.get("note", "")),
        )

    def check_derivation(self, price: ModelPrice, cny_per_usd: Decimal | None) -> None:
        """basis = "usd": credits per 1K must be exactly USD per 1M x CNY/USD x 10."""
        where = f"models.{price.name}"
        if cny_per_usd is None:
            raise self.fail(where, 'basis = "usd" needs [exchange] cny_per_usd')
        factor = Fraction(cny_per_usd) * CREDITS_PER_CNY / 1000  # per 1M -> per 1K tokens
        pairs = [
            ("input", price.input, price.usd_input),
            ("output", price.output, price.usd_output),
        ]
        if price.cached_input is not None or price.usd_cached_input is not None:
            pairs.append(("cached_input", price.cached_input, price.usd_cached_input))
        for key, credits, usd in pairs:
            if usd is None or credits is None:
                raise self.fail(f"{where}.{key}", 'basis = "usd" needs both usd_ and credits')
            expected = Fraction(usd) * factor
            if credits != expected:
                raise self.fail(
                    f"{where}.{key}",
                    f"{_dec(credits)} credits per 1K does not match usd_{key} {usd} x "
                    f'{cny_per_usd} CNY/USD = {_dec(expected)}; fix it or set basis = "fixed"',
                )

    def image_model(self, name: str, t: dict[str, Any]) -> ModelPrice:
        where = f"images.{name}"
        unknown = set(t) - {*IMAGE_ACTIONS, "note"}
        if unknown:
            raise self.fail(where, f"unknown field(s) {', '.join(sorted(unknown))}")
        actions: dict[str, int] = {}
        for action in IMAGE_ACTIONS:
            if action not in t:
                raise self.fail(f"{where}.{action}", "missing (credits per image)")
            credits = self.price(t[action], f"{where}.{action}")
            milli = credits * MILLI_PER_CREDIT
            if milli.denominator != 1:
                raise self.fail(f"{where}.{action}", "at most 3 decimals (1 millicredit)")
            actions[action] = int(milli)
        return ModelPrice(
            name=name,
            kind="image",
            actions=MappingProxyType(actions),
            note=str(t.get("note", "")),
        )

    def table(self, data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(where, "must be a table")
        return value

    def decimal(self, value: Any, where: str) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
            raise self.fail(where, f"expected a decimal number, got {value!r}")
        try:
            number = Decimal(value.strip() if isinstance(value, str) else value)
        except InvalidOperation:
            raise self.fail(where, f"expected a decimal number, got {value!r}") from None
        if not number.is_finite():
            raise self.fail(where, f"expected a finite number, got {value!r}")
        return number

    def optional_decimal(self, t: dict[str, Any], key: str, where: str) -> Decimal | None:
        if key not in t:
            return None
        number = self.decimal(t[key], f"{where}.{key}")
        if number < 0:
            raise self.fail(f"{where}.{key}", "must not be negative")
        return number

    def price(self, value: Any, where: str) -> Fraction:
        number = Fraction(self.decimal(value, where))
        if number < 0:
            raise self.fail(where, "must not be negative")
        return number


def _dec(value: Fraction) -> str:
    try:
        return format_decimal(value)
    except ValueError:
        return str(value)
