"""Real PostgreSQL and Redis for the tests, never shared between runs.

Redis: a throwaway `redis-server` on a free loopback port (or REDIS_URL if set).
PostgreSQL: a fresh database per request on DATABASE_URL's server, else the local server on
127.0.0.1:5432, else a throwaway cluster started with initdb/pg_ctl.
Under CI=true a missing service is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip locally; fail under CI, where every backend must be exercised."""
    if IN_CI:
        pytest.fail(f"required service unavailable under CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@contextmanager
def redis_server() -> Iterator[str | None]:
    """Yield a Redis URL for this test run, or None when there is no Redis to be had."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    if not binary:
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="creditbot-redis-") as tmp:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if not _wait_port(port):
                yield None
                return
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _pg_reachable(dsn: str) -> bool:
    import asyncpg

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(dsn, timeout=3)
        except Exception:
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


@contextmanager
def postgres_server() -> Iterator[str | None]:
    """Yield an admin DSN (postgresql://...) of a server we may create databases on."""
    env = os.environ.get("DATABASE_URL")
    if env:
        yield env.replace("postgresql+asyncpg://", "postgresql://")
        return
    local = "postgresql://postgres@127.0.0.1:5432/postgres"
    if _pg_reachable(local):
        yield local
        return
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="creditbot-pg-") as tmp:
        data = Path(tmp) / "data"
        run_as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            os.chmod(tmp, 0o777)
            run_as = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            [
                *run_as,
                pg_ctl,
                "-D",
                str(data),
                "-o",
                f"-p {port} -k {tmp} -h 127.0.0.1",
                "-l",
                str(Path(tmp) / "log"),
                "-w",
                "start",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                stdout=subprocess.DEVNULL,
                check=False,
            )


def create_database(admin_dsn: str) -> str:
    """Create a uniquely named database; return its SQLAlchemy asyncpg URL."""
    import asyncpg

    name = f"creditbot_test_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    base = admin_dsn.rsplit("/", 1)[0]
    return base.replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"


def drop_database(admin_dsn: str, url: str) -> None:
    import asyncpg

    name = url.rsplit("/", 1)[1]

    async def drop() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())
