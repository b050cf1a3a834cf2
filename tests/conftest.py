"""Shared fixtures: real stores for every backend, each test on its own data."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes import services

_redis_db = itertools.count(1)

# A test that takes one of these fixtures needs that server, and is marked for it.
SERVICE_FIXTURES = {
    "postgres": frozenset({"postgres_url", "pg_admin_dsn"}),
    "redis": frozenset({"redis_url", "redis_base_url"}),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests `postgres` / `redis` by the fixtures they take, so `-m "not postgres"` works.

    A fixture parametrized by backend name (`store_url`, or any `*_url` fixture whose param is
    "postgres" or "redis") asks for its server only at run time: its param counts too.
    """
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        backends = {v for k, v in params.items() if k.endswith("_url") and isinstance(v, str)}
        for marker, fixtures in SERVICE_FIXTURES.items():
            if names & fixtures or marker in backends:
                item.add_marker(marker)


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str | None]:
    with services.redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str | None]:
    with services.postgres_server() as dsn:
        yield dsn


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'creditbot.db'}"


@pytest.fixture
def postgres_url(pg_admin_dsn: str | None) -> Iterator[str]:
    if not pg_admin_dsn:
        services.unavailable("no PostgreSQL server (set DATABASE_URL or install PostgreSQL)")
    url = services.create_database(pg_admin_dsn)
    yield url
    services.drop_database(pg_admin_dsn, url)


@pytest.fixture
def redis_url(redis_base_url: str | None) -> Iterator[str]:
    """A Redis URL on a database number of its own, flushed before use."""
    if not redis_base_url:
        services.unavailable("no Redis server (set REDIS_URL or install redis-server)")
    import redis

    base = redis_base_url.rsplit("/", 1)[0]
    db = next(_redis_db) % 16
    url = f"{base}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The same test, once per backend: a SQLite file, a PostgreSQL database, a Redis db."""
    return request.getfixturevalue(f"{request.param}_url")
