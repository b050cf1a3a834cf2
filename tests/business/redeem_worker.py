"""One redeemer in its own OS process: waits for the start signal, redeems, prints the outcome.

Run as `python -m tests.business.redeem_worker URL CODE ACCOUNT GO_FILE`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import billing
from bot.codes import CodeError, redeem_code
from bot.store import open_store


def _wait_for(go: Path) -> None:
    """Spin (blocking, on purpose) so every process leaves at the same moment."""
    while not go.exists():
        time.sleep(0.002)


async def main(url: str, code: str, account: str, go: Path) -> str:
    wallet = await billing.open_wallet(url)
    store = await open_store(url)
    try:
        print("ready", flush=True)
        _wait_for(go)
        try:
            credited = await redeem_code(wallet, store, account, code, user_key=account)
            return f"ok {credited}"
        except CodeError as exc:
            return exc.kind
    finally:
        await store.close()
        await wallet.close()


if __name__ == "__main__":
    url, code, account, go = sys.argv[1:5]
    print(asyncio.run(main(url, code, account, Path(go))), flush=True)
