"""The ceilings: four minimal Starlette apps that bound what the API can reach.

`python -m bench.ceilings KIND` serves GET /ceiling/{card_id} on 127.0.0.1:$PORT with one
uvicorn worker (uvloop + httptools, as the API runs), where KIND is

- constant: returns a constant JSON (routing and HTTP alone);
- redis-get: one `await redis.get()` per request (redis.asyncio + hiredis), the naive
  cache hit that the API's hit path is held against;
- pg-select: one asyncpg prepared SELECT of a card's balance by primary key, the floor
  under every uncached read of the API;
- pg-update: the durable-write floor, one autocommit `UPDATE cards SET balance = balance
  WHERE card_id = $1` (one row version, one commit, nothing else) on the card in the path
  (the bench sends random cards of 64, as its recharges do).

These apps are the baselines, so they may use SQL on the bench's database directly.

Each parses the card id from the path, as the API does, so routing costs the same.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

KINDS = ("constant", "redis-get", "pg-select", "pg-update")
CACHED_VALUE = b'{"card_id":1,"balance":3000000,"status":"active","last_used_date":null}'
REDIS_KEY = b"ceiling:card-balance"
SELECT_BALANCE = "SELECT card_id, balance, status, last_used_date FROM cards WHERE card_id = $1"
TOUCH_BALANCE = "UPDATE cards SET balance = balance WHERE card_id = $1"
UPDATED = b'{"updated":true}'


def json_response(body: bytes) -> Response:
    return Response(body, media_type="application/json")


async def constant(request: Request) -> Response:
    int(request.path_params["card_id"])
    return json_response(CACHED_VALUE)


async def redis_get(request: Request) -> Response:
    int(request.path_params["card_id"])
    return json_response(await request.state.redis.get(REDIS_KEY))


async def pg_select(request: Request) -> Response:
    row = await request.state.pool.fetchrow(SELECT_BALANCE, int(request.path_params["card_id"]))
    return json_response(msgspec.json.encode(dict(row)) if row is not None else b"null")


async def pg_update(request: Request) -> Response:
    await request.state.pool.execute(TOUCH_BALANCE, int(request.path_params["card_id"]))
    return json_response(UPDATED)


@contextlib.asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[dict[str, object]]:
    # The naive client gets a connection per request in flight; a blocking pool because
    # redis-py's default pool raises past its limit, which turns 128 connections into errors.
    redis = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(os.environ["REDIS_URL"], max_connections=256)
    )
    await redis.set(REDIS_KEY, CACHED_VALUE)
    # The API's pool size, so that the SELECT app gets the same PostgreSQL parallelism.
    pool = await asyncpg.create_pool(
        os.environ["DATABASE_URL"], min_size=16, max_size=16, server_settings={"jit": "off"}
    )
    try:
        yield {"redis": redis, "pool": pool}
    finally:
        await pool.close()
        await redis.aclose()


def create_app(kind: str) -> Starlette:
    handler = {"constant": constant, "redis-get": redis_get, "pg-select": pg_select, "pg-update": pg_update}[kind]
    return Starlette(routes=[Route("/ceiling/{card_id}", handler)], lifespan=lifespan)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in KINDS:
        sys.exit(f"usage: python -m bench.ceilings {{{','.join(KINDS)}}}  (env DATABASE_URL, REDIS_URL, PORT)")
    uvicorn.run(
        create_app(sys.argv[1]),
        host="127.0.0.1",
        port=int(os.environ["PORT"]),
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
