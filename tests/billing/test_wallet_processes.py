"""The 37-of-500 hold race across 4 OS processes, for every backend.

Each process opens the wallet by URL on a fresh database at the same moment (so the schema
migration itself races too), waits for a common start signal, then fires its share of holds
concurrently. Across all processes exactly the 37 holds the balance covers may succeed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from pathlib import Path

import pytest

import billing

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 4
HOLDS = 500
COVERED = 37
UNIT = 1_000
ACCOUNT = "tg:race"

WORKER = textwrap.dedent(
    """
    import asyncio, json, sys
    import billing
    from billing import InsufficientCredits

    async def main(url: str, worker: int, count: int, unit: int, account: str) -> None:
        wallet = await billing.open_wallet(url)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        results = await asyncio.gather(
            *(wallet.hold(account, unit, f"p{worker}-{i}", 60) for i in range(count)),
            return_exceptions=True,
        )
        await wallet.close()
        won = sum(1 for r in results if not isinstance(r, BaseException))
        refused = sum(1 for r in results if isinstance(r, InsufficientCredits))
        other = [repr(r) for r in results if isinstance(r, BaseException)
                 and not isinstance(r, InsufficientCredits)]
        print(json.dumps({"won": won, "refused": refused, "other": other[:5]}), flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                     sys.argv[5]))
    """
)


async def _spawn(url: str, worker: int, count: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER,
        url,
        str(worker),
        str(count),
        str(UNIT),
        ACCOUNT,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.slow
async def test_four_processes_race_for_37_holds(store_url: str) -> None:
    share = HOLDS // PROCESSES
    procs = [await _spawn(store_url, w, share) for w in range(PROCESSES)]
    try:
        for p in procs:  # every process has opened (and migrated) the fresh database
            assert p.stdout is not None
            line = await asyncio.wait_for(p.stdout.readline(), 60)
            if line.strip() != b"ready":
                _, err = await p.communicate()
                raise AssertionError(f"worker failed to open the wallet: {err.decode()[-2000:]}")

        wallet = await billing.open_wallet(store_url)
        try:
            await wallet.credit(ACCOUNT, COVERED * UNIT, "race-topup", "top-up")
            outs = await asyncio.gather(
                *(asyncio.wait_for(p.communicate(b"go\n"), 120) for p in procs)
            )
            reports = []
            for p, (out, err) in zip(procs, outs, strict=True):
                assert p.returncode == 0, err.decode()[-2000:]
                reports.append(json.loads(out.decode().strip().splitlines()[-1]))
            assert all(r["other"] == [] for r in reports), reports
            assert sum(r["won"] for r in reports) == COVERED
            assert sum(r["refused"] for r in reports) == share * PROCESSES - COVERED
            b = await wallet.balance(ACCOUNT)
            assert (b.total, b.held, b.available) == (COVERED * UNIT, COVERED * UNIT, 0)
            assert len(await wallet.open_holds()) == COVERED
        finally:
            await wallet.close()
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
