"""Alembic migrations for every SQL table creditbot keeps (wallet "0001", bot store "0002", ...).

`upgrade(connection)` brings a database to head from inside a caller's transaction, so an
application can migrate on start without an alembic.ini: see `billing.storage.sql_engine.migrate`.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

HERE = Path(__file__).resolve().parent


def alembic_config(connection: Connection | None = None) -> Config:
    """A programmatic Alembic config pointing at this directory (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Run every migration up to `revision` on an open (sync) connection, inside its transaction."""
    command.upgrade(alembic_config(connection), revision)
