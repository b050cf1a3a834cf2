"""The composition root: the one place that builds a Core from the settings.

`await assemble(settings)` opens the wallet, the store, the price list and the upstream
clients (whatever the caller did not pass in), wraps the wallet and the clients with the
metrics counters, and hands them to the Core, which closes what was opened here in its
`close()`. Tests and benchmarks pass in their own parts; the front ends pass only settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from billing.pricing import PriceList
from billing.wallet import open_wallet
from billing.wallet.base import Wallet
from bot import metrics
from bot.accounts import Accounts
from bot.context import Services
from bot.conversations import Conversations
from bot.core import Core
from bot.limits import InflightLimiter
from bot.providers.midjourney import MidjourneyClient
from bot.providers.openai import OpenAIClient
from bot.settings import Settings
from bot.store import open_store
from bot.store.base import Store


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite URL ("sqlite+aiosqlite:///data/x.db" -> data/x.db), else None."""
    if not url.startswith("sqlite"):
        return None
    _, _, rest = url.partition(":///")
    rest = rest.split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest)


async def assemble(
    settings: Settings,
    *,
    wallet: Wallet | None = None,
    store: Store | None = None,
    prices: PriceList | None = None,
    openai: Any = None,
    mj: Any = None,
) -> Core:
    """A Core with whatever is not passed in opened from the settings (and closed again by
    Core.close())."""
    owned: list[Any] = []
    path = sqlite_path(settings.wallet_url)
    if path is not None and (wallet is None or store is None):
        path.parent.mkdir(parents=True, exist_ok=True)
    if wallet is None:
        wallet = await open_wallet(settings.wallet_url)
        owned.append(wallet)
    if store is None:
        store = await open_store(settings.wallet_url)
        owned.append(store)
    if prices is None:
        prices = PriceList.load(settings.prices_file)
    if openai is None:
        openai = OpenAIClient(
            settings.openai_base_url,
            settings.openai_api_key,
            connect_timeout=settings.openai_connect_timeout,
            read_timeout=settings.openai_read_timeout,
            max_retries=settings.openai_max_retries,
            proxy=settings.openai_proxy or None,
        )
        owned.append(openai)
    if mj is None and settings.mj_base_url:
        mj = MidjourneyClient(
            settings.mj_base_url, settings.mj_api_secret, dialect=settings.mj_dialect
        )
        owned.append(mj)
    wallet, openai, mj = instrumented(wallet, openai, mj)
    services = Services(
        settings=settings,
        wallet=wallet,
        store=store,
        prices=prices,
        openai=openai,
        mj=mj,
        accounts=Accounts(store, wallet),
        conversations=Conversations(store),
        limiter=InflightLimiter(store, settings.max_inflight_per_user),
    )
    return Core(services, owned=owned)


def instrumented(wallet: Any, openai: Any, mj: Any) -> tuple[Any, Any, Any]:
    """The wallet and the upstream clients wrapped with bot.metrics' counters."""
    return (
        metrics.instrument_wallet(wallet),
        metrics.instrument_openai(openai),
        metrics.instrument_mj(mj) if mj is not None else None,
    )
