"""Storage for creditbot's state: SQL engines, SQLite's writer thread, Redis, migrations.

Public, and used by the wallet (billing.wallet) and by the bot's key-value store (bot.store)
alike, so both open a database the same way and can share one file or one server. It knows
no money rules and no chat, and imports nothing from billing.wallet.

- `billing.storage.sql_engine`: an engine from a URL (SQLite or PostgreSQL) with creditbot's
  settings, `migrate`, `retrying` for transient lock failures, `writer`, `sqlite_options`,
  `sqlite_file`;
- `billing.storage.sqlite_writer`: `SqliteWriter`, one thread per file and process that
  group-commits every write waiting at that moment;
- `billing.storage.redis_client`: `connect` (blocking pool, hiredis packing), `AutoPipeline`;
- `billing.storage.schema`: shared column types (`ID`, `UtcDateTime`) and the key-value tables;
- `billing.storage.migrations`: the Alembic revisions of every SQL table (wallet and key-value),
  `upgrade(connection)`.

The modules are imported one by one (nothing here imports them), so a SQL user never loads
redis and a Redis user never loads SQLAlchemy.
"""
