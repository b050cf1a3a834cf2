"""`bot.api.CoreAPI` is what adapters are written against: the real Core must provide every
member, with the same parameters, since nothing in `make test` type-checks the two against
each other."""

from __future__ import annotations

import inspect
from pathlib import Path

from bot.api import CoreAPI
from bot.assemble import assemble
from bot.core import Core
from bot.settings import Settings


def _api_members() -> dict[str, object]:
    return {
        name: value
        for name, value in vars(CoreAPI).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    }


def test_the_core_has_every_method_of_the_api_with_its_signature() -> None:
    members = _api_members()
    assert {"handle", "press", "set_sink", "deliver", "credit_payment", "mj_notify"} <= set(members)
    for name, member in members.items():
        if isinstance(member, property):
            continue  # attributes: checked on a built core below
        ours = getattr(Core, name, None)
        assert ours is not None, f"Core has no {name}"
        assert inspect.signature(ours) == inspect.signature(member), name
        is_coroutine = inspect.iscoroutinefunction
        assert is_coroutine(ours) == is_coroutine(member), name


async def test_an_assembled_core_has_the_api_attributes(tmp_path: Path) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        wallet_url=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        openai_api_key="sk-test",
        mj_base_url="",
    )
    core = await assemble(settings, openai=object())
    try:
        for name, member in _api_members().items():
            if isinstance(member, property):
                assert getattr(core, name) is not None, name
        assert core.kv is core.services.store
    finally:
        await core.close()
