"""Test session: a private PostgreSQL and a private Redis on free ports, started once.

Each test that asks for `database_url` gets a database of its own, copied from a template
that holds the applied schema and a small transit network. The helpers behind these fixtures
are in tests/support/stack.py."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.support.servers import StartServer, server_process
from tests.support.stack import Api, copy_template, create_template, register_test_tokens, running_stack, serve_api
from travel import database
from travel.startup.embedded import EmbeddedStack
from travel.startup.processes import ServerProcess

_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """The private servers of this test session."""
    with running_stack(tmp_path_factory.mktemp("stack")) as local:
        yield local


@pytest.fixture(scope="module")
def module_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """Servers of one test module alone, for tests that stop, pause or kill them: what they
    break reaches no other module. A short directory keeps the unix socket path within limits."""
    with running_stack(tmp_path_factory.mktemp("own")) as local:
        yield local


@pytest.fixture(scope="session")
async def template_url(stack: EmbeddedStack) -> str:
    """The template every test database is copied from (the schema and the small network)."""
    return await create_template(stack)


@pytest.fixture
async def database_url(stack: EmbeddedStack, template_url: str) -> str:
    """A fresh database with the schema and the small network, for this test alone."""
    return await copy_template(stack, f"test_{next(_database_numbers)}")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this test's database."""
    test_pool = await database.create_pool(database_url, min_size=1, max_size=70)
    try:
        yield test_pool
    finally:
        await test_pool.close()


@pytest.fixture
async def redis_client(stack: EmbeddedStack) -> AsyncIterator[aioredis.Redis]:
    """A client of the session's Redis, emptied for this test."""
    client = aioredis.Redis.from_url(stack.redis.url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def api(database_url: str, stack: EmbeddedStack, redis_client: aioredis.Redis) -> AsyncIterator[Api]:
    """The real server on this test's database and the session's (emptied) Redis."""
    async with serve_api(database_url, stack.redis.url) as running:
        yield running


@pytest.fixture
def run_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start `python server.py` with the given environment (`run_server(DATABASE_URL=...)`);
    each one started is stopped after the test, its output in tmp_path."""
    started: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        started.append(server_process(tmp_path / f"server-{len(started) + 1}.log", **env))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def served(database_url: str, stack: EmbeddedStack, run_server: StartServer) -> ServerProcess:
    """`python server.py` on this test's database and the session's Redis, healthy, with the test tokens."""
    await register_test_tokens(database_url)
    server = run_server(DATABASE_URL=database_url, REDIS_URL=stack.redis.url)
    server.wait_healthy()
    return server


@pytest.fixture
def database_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the queries the server runs, in order (the in-process `api`'s)."""
    calls: list[str] = []
    original = database.Database.run

    async def counting(self: database.Database, query: database.Query, *args: Any) -> Any:
        calls.append(query.name)
        return await original(self, query, *args)

    monkeypatch.setattr(database.Database, "run", counting)
    return calls
