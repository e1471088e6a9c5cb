"""The session's servers and the API under test: databases copied from a template that holds
the applied schema and a small transit network (fast: CREATE DATABASE ... TEMPLATE), the test
tokens, and the real server run in the test's event loop (`serve_api`)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette

import server
from tests.support.polling import eventually_async
from travel import database
from travel.settings import Settings
from travel.startup import serve
from travel.startup.embedded import EmbeddedStack
from travel.startup.processes import free_port

TEMPLATE = "travel_template"


def with_database(url: str, name: str) -> str:
    """The same server URL, pointing at database `name`."""
    return url.rsplit("/", 1)[0] + "/" + name


# A small network: two localities' stations, a bus route and a cable route, a recharge point.
NETWORK_SQL = """
INSERT INTO stations (station_id, name, station_code, station_type, location_id) VALUES
    (1, 'Portal Norte', 'TM-001', 'PORTAL', (SELECT location_id FROM locations WHERE name = 'Usaquén')),
    (2, 'Calle 100', 'TM-002', 'TRUNK', (SELECT location_id FROM locations WHERE name = 'Chapinero')),
    (3, 'Tunal', 'TM-003', 'PORTAL', (SELECT location_id FROM locations WHERE name = 'Tunjuelito')),
    (4, 'Mirador del Paraíso', 'TC-001', 'CABLE', (SELECT location_id FROM locations WHERE name = 'Ciudad Bolívar'));
INSERT INTO routes (route_id, route_code, route_name, route_type, origin_station_id, destination_station_id) VALUES
    (1, 'B74', 'Portal Norte - Calle 100', 'TRUNK', 1, 2),
    (2, 'H20', 'Tunal - Portal Norte', 'TRUNK', 3, 1),
    (3, 'TC1', 'TransMiCable Tunal - Mirador', 'CABLE', 3, 4),
    (4, 'X99', 'Retired route', 'ZONAL', 1, 3);
UPDATE routes SET is_active = false WHERE route_id = 4;
INSERT INTO recharge_points (recharge_point_id, name, location_id, operator) VALUES
    (1, 'Taquilla Portal Norte', (SELECT location_id FROM locations WHERE name = 'Usaquén'), 'Recaudo Bogotá'),
    (2, 'Punto Tunal', (SELECT location_id FROM locations WHERE name = 'Tunjuelito'), 'Recaudo Bogotá');
SELECT setval(pg_get_serial_sequence('stations', 'station_id'), 100),
       setval(pg_get_serial_sequence('routes', 'route_id'), 100),
       setval(pg_get_serial_sequence('recharge_points', 'recharge_point_id'), 100);
"""


@contextlib.contextmanager
def running_stack(directory: Path) -> Iterator[EmbeddedStack]:
    """An EmbeddedStack started in `directory` (not durable: tests need no fsync), stopped after the block."""
    local = EmbeddedStack(directory, durable=False)
    local.start()
    try:
        yield local
    finally:
        local.stop()


def start_stopped_servers(local: EmbeddedStack) -> None:
    """Start again whichever of `local`'s servers a test stopped, for the tests after it."""
    if local.redis.process is None:
        local.redis.start()
    if not (local.postgres.data_dir / "postmaster.pid").exists():
        local.postgres.start()


async def prepare_network_database(url: str) -> None:
    """Apply the schema and the small network to the (empty) database at `url`."""
    conn = await asyncpg.connect(url)
    try:
        await database.apply_schema(conn)
        await conn.execute(NETWORK_SQL)
    finally:
        await conn.close()


async def create_template(stack: EmbeddedStack) -> str:
    """The template database (the schema and the small network) on `stack`; its URL."""
    admin = await asyncpg.connect(stack.postgres.url)
    try:
        await admin.execute(f"CREATE DATABASE {TEMPLATE}")
    finally:
        await admin.close()
    url = with_database(stack.postgres.url, TEMPLATE)
    await prepare_network_database(url)
    return url


async def copy_template(stack: EmbeddedStack, name: str) -> str:
    """A new database `name` copied from the template (the schema and the small network); its URL."""
    admin = await asyncpg.connect(stack.postgres.url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    finally:
        await admin.close()
    return with_database(stack.postgres.url, name)


async def fresh_database(stack: EmbeddedStack, prefix: str) -> str:
    """A database of its own, copied from the session's template, with the test tokens."""
    url = await copy_template(stack, f"{prefix}_{uuid.uuid4().hex[:10]}")
    await register_test_tokens(url)
    return url


# One token per role; the recharge point's token belongs to recharge point 1.
TOKENS = {
    "admin": "admin-token-for-tests",
    "recharge_point": "recharge-point-1-token",
    "validator": "validator-token-for-tests",
}


def bearer(role: str) -> dict[str, str]:
    """The Authorization header of `role`'s test token."""
    return {"Authorization": f"Bearer {TOKENS[role]}"}


@dataclass
class Api:
    """A running API (uvicorn on a free port, in this event loop) and a client for it."""

    http: httpx.AsyncClient
    url: str
    app: Starlette
    database_url: str
    state: dict[str, Any]  # what the lifespan yielded: db, cache, tokens ...

    def auth(self, role: str) -> dict[str, str]:
        return bearer(role)


async def register_test_tokens(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for role, token in TOKENS.items():
            point = 1 if role == "recharge_point" else None
            await database.QUERIES["register-token"](conn, hashlib.sha256(token.encode()).digest(), role, role, point)
    finally:
        await conn.close()


async def check_answer(response: httpx.Response) -> None:
    """What every answer a test receives must be: never a stack trace, never a 500."""
    await response.aread()
    assert b"Traceback" not in response.content, response.content[:2000]
    assert response.status_code != 500, (response.request.method, response.request.url, response.content[:2000])


@contextlib.asynccontextmanager
async def serve_api(database_url: str, redis_url: str, **settings: object) -> AsyncIterator[Api]:
    """Run the real server (uvicorn on a free port, in this event loop) until the block ends;
    its client checks every answer (`check_answer`)."""
    await register_test_tokens(database_url)
    fields: dict[str, Any] = {"database_url": database_url, "redis_url": redis_url, "pool_min": 2, "pool_max": 20}
    configured = Settings(**{**fields, **settings})
    await serve.prepare_database(configured)  # what `python server.py` does before serving
    app = server.create_app(configured)
    port = free_port()
    uvicorn_server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning", access_log=False)
    )
    serving = asyncio.create_task(uvicorn_server.serve())

    def started() -> bool:  # uvicorn offers a flag, not an event
        if serving.done():
            serving.result()  # raises what stopped it
            raise RuntimeError("uvicorn stopped before it started serving")
        return uvicorn_server.started

    await eventually_async(started, 30, "uvicorn serving", every=0.005)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(
            base_url=url + "/api/v1", timeout=10, event_hooks={"response": [check_answer]}
        ) as http:
            yield Api(http, url, app, database_url, uvicorn_server.lifespan.state)
    finally:
        uvicorn_server.should_exit = True
        await serving


@contextlib.asynccontextmanager
async def module_api(stack: EmbeddedStack, prefix: str, **settings: object) -> AsyncIterator[Api]:
    """A server on a database of its own (copied from the template) and an emptied Redis:
    one server for a whole module (hundreds of parametrised cases on a server started once)."""
    url = await copy_template(stack, f"{prefix}_{uuid.uuid4().hex[:10]}")
    redis = aioredis.Redis.from_url(stack.redis.url)
    try:
        await redis.flushdb()  # the cache keys do not name the database: start empty
    finally:
        await redis.aclose()
    async with serve_api(url, stack.redis.url, **settings) as running:
        yield running
