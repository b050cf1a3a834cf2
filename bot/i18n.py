"""User-facing texts in English and Simplified Chinese, kept in `bot/locales/*.toml`.

Every message a user can see goes through `t(key, lang, **values)`, so a new language is one
more TOML file and a missing translation falls back to English instead of failing.
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path

LANGUAGES = ("en", "zh")
_DIR = Path(__file__).with_name("locales")


@cache
def _catalog(lang: str) -> dict[str, str]:
    with (_DIR / f"{lang}.toml").open("rb") as f:
        data = tomllib.load(f)
    return {k: v.strip("\n") if isinstance(v, str) else str(v) for k, v in data.items()}


def language_of(code: str | None, default: str = "en") -> str:
    """The catalog for a platform's language code: zh, zh-CN, zh-hans -> "zh"; others "en"."""
    value = (code or default or "en").strip().lower()
    return "zh" if value.startswith("zh") else "en"


def t(key: str, lang: str | None = "en", /, **values: object) -> str:
    """The text for `key` in `lang` (English if that language lacks it), filled with values."""
    lang = language_of(lang)
    template = _catalog(lang).get(key)
    if template is None:
        template = _catalog("en").get(key)
    if template is None:
        raise KeyError(f"no text for {key!r}")
    return template.format(**values)


def keys(lang: str = "en") -> set[str]:
    """Every key a catalog defines (the tests check en and zh have the same ones)."""
    return set(_catalog(lang))
