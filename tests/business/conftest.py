"""Fixtures for the business tests: a real wallet and store on the same URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

import billing
from billing.wallet.base import Wallet
from bot.store import open_store
from bot.store.base import Store


@dataclass
class Bank:
    """The wallet and the store of one backend, as the bot opens them."""

    url: str
    wallet: Wallet
    store: Store


async def _open(url: str) -> AsyncIterator[Bank]:
    wallet = await billing.open_wallet(url)
    store = await open_store(url)
    try:
        yield Bank(url, wallet, store)
    finally:
        await store.close()
        await wallet.close()


@pytest.fixture
async def bank(store_url: str) -> AsyncIterator[Bank]:
    """Wallet and store on each backend in turn (SQLite, PostgreSQL, Redis)."""
    async for b in _open(store_url):
        yield b


@pytest.fixture
async def sqlite_bank(sqlite_url: str) -> AsyncIterator[Bank]:
    """Wallet and store on a SQLite file, where the backend does not matter."""
    async for b in _open(sqlite_url):
        yield b
