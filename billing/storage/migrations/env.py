"""Alembic environment: runs on the connection the application hands over.

Generic on purpose: every revision in versions/ runs in order, whoever wrote it. Called either
through `billing.storage.migrations.upgrade(connection)` (the normal way, on wallet/store open)
or from the `alembic` command line with `-x url=...` / `sqlalchemy.url`, in which case it opens
the database itself (async URLs are run through `run_sync`).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _run_standalone(url: str) -> None:
    from billing.storage.sql_engine import create_engine, migrate

    async def go() -> None:
        engine = create_engine(url)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(go())


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
elif context.is_offline_mode():
    context.configure(
        url=context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url"),
        target_metadata=None,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    _url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not _url:
        raise SystemExit("no database URL: pass -x url=... or set sqlalchemy.url")
    _run_standalone(_url)
