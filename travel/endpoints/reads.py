"""The read handlers: health, the cache-aside reads (declared through `cached_read`), the
uncached reads (straight from PostgreSQL; identical ones arriving together share one round
trip: `Database.read`), and the dashboard's reads."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response

import cachekeys
from cachekeys import CachedKey
from travel import models
from travel.cache import Cache, Lookup
from travel.database import QUERIES, rows_as
from travel.endpoints import hourly
from travel.endpoints.declaration import Access, Call, Endpoint
from travel.endpoints.responses import JSONBytes, encode
from travel.errors import DATABASE_ERRORS, Problem
from travel.observability import metrics, stats

PING = QUERIES["ping"]
USERS_COUNT = QUERIES["users-count"]
USERS_ACTIVE_COUNT = QUERIES["users-active-count"]
USERS_LATEST = rows_as("users-latest", models.User)
TRIPS_HOURLY = rows_as("trips-hourly", models.HourTrips)


async def cached(call: Call[None], key: bytes, ttl: int, load: Callable[[], Awaitable[bytes]]) -> Response:
    """Serve `key` from Redis, or `load()` it from PostgreSQL and fill the cache (docs/design.md: cache-aside)."""
    cache: Cache = call.state.cache
    lookup: Lookup = await cache.lookup(key)
    if lookup.value is not None:
        metrics.CACHE_HITS.inc()
        return JSONBytes(lookup.value, cache=b"HIT")
    metrics.CACHE_MISSES.inc()
    return JSONBytes(await cache.load(lookup, ttl, load), cache=b"MISS")


def cached_read(
    *,
    path: str,
    summary: str,
    key: CachedKey,
    query: str,
    answer: type,
    many: bool = False,
    missing: str = "",
    access: Access = Access.PUBLIC,
) -> Endpoint:
    """The declaration of a cached GET of what the named `query` finds, answered as `answer`
    (a list of them when `many`). With an id in the path it reads the primary (it must show a
    write as soon as that returned) and finding nothing is 404 `missing`; without one
    (aggregates, reference data) it may read a replica."""
    statement = rows_as(query, answer)
    if many:  # LEFT JOINs give one all-NULL row when nothing matched: not an item

        def shape(found: Any) -> Any:
            return [answer(*row) for row in found if row[0] is not None]
    else:

        def shape(found: Any) -> Any:
            return answer(*found)

    param = next((part[1:-1] for part in path.split("/") if part.startswith("{")), "")
    assert bool(param) == bool(missing), f"{path}: a read by id names the code of its 404, and only it"
    if param:

        async def read(call: Call[None]) -> Response:
            item_id = call.path_id

            async def load() -> bytes:
                found = await call.state.db.run(statement, item_id)
                if not found:
                    which: dict[str, Any] = {param: item_id}
                    raise Problem(404, missing, f"no {param.removesuffix('_id')} with this id", **which)
                return encode(shape(found))

            return await cached(call, key(item_id), key.ttl, load)
    else:
        fixed_key = key()

        async def read(call: Call[None]) -> Response:
            async def load() -> bytes:
                return encode(shape(await call.state.lagging_db.run(statement)))

            return await cached(call, fixed_key, key.ttl, load)

    read.__name__ = query.replace("-", "_")
    return Endpoint(
        method="GET",
        path=path,
        handler=read,
        summary=summary,
        answer=list[answer] if many else answer,  # type: ignore[valid-type]
        errors=(404,) if param else (),
        access=access,
        cache=key,
    )


async def health(call: Call[None]) -> Response:
    state = call.state
    try:  # straight to the pool: a busy service is not a dead database
        await asyncio.wait_for(PING(state.db.pool), timeout=1.0)
        database = "ok"
    except DATABASE_ERRORS:
        database = "down"
    cache = "ok" if await state.cache.ping() else "down"
    status = "ok" if database == cache == "ok" else "degraded"
    answer = models.Health(status=status, database=database, cache=cache)  # type: ignore[arg-type]
    return JSONBytes(encode(answer), 200 if database == "ok" else 503)


async def users_count(call: Call[None]) -> models.Count:
    return models.Count(await call.state.lagging_db.read(USERS_COUNT))


async def users_active_count(call: Call[None]) -> models.Count:
    return models.Count(await call.state.lagging_db.read(USERS_ACTIVE_COUNT))


async def users_latest(call: Call[None]) -> list[models.User]:
    return [models.User(*row) for row in await call.state.lagging_db.read(USERS_LATEST)]


async def trips_hourly(call: Call[None]) -> Response:
    hours = hourly.hours_asked(call.request)

    async def load() -> bytes:
        return encode(hourly.hours_of(await call.state.lagging_db.run(TRIPS_HOURLY, hours)))

    return await cached(call, cachekeys.trips_hourly(hours), cachekeys.trips_hourly.ttl, load)


async def instance_stats(call: Call[None]) -> models.Stats:
    return await stats.collect(call.state.db, call.state.cache)
