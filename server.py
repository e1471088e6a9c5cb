"""Travel Recharge API: Starlette routes over hand-written SQL (asyncpg) and a Redis cache.

The handlers, the cache-aside read, the write path, the lifespan that opens the pools, and
at the bottom the route table: one declaration per endpoint. `python server.py` serves
(start-up, the embedded stack and signals are in startup.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

import batching
import cachekeys
import dashboard
import db
import hourly
import metrics
import models
import openapi
import stats
from cache import Cache, Lookup, connect
from cachekeys import CachedKey
from db import QUERIES, Database, Overloaded, Query
from endpoints import Endpoint
from errors import (
    DATABASE_ERRORS, DATABASE_UNAVAILABLE_ERRORS, Problem, handle_postgres, handle_problem,
    handle_unavailable, handle_unexpected,
)
from settings import Settings

log = logging.getLogger("travel.api")
BodyT = TypeVar("BodyT", bound=models.Body)

MAX_BODY = 64 * 1024
TOKEN_CACHE_SECONDS = 30.0  # a revoked token stops working within this long
# A retry of a recharge is answered from its first answer for this long (Stripe keeps 24 h).
IDEMPOTENCY_RETENTION = datetime.timedelta(hours=24)
PRUNE_EVERY_SECONDS = 600.0
PRUNE_BATCH = 5000
API = "/api/v1"
# What a statement outside a request's own answer may meet: logged, never answered.
STATEMENT_ERRORS: tuple[type[Exception], ...] = (Overloaded, *DATABASE_ERRORS)


def query(name: str) -> Query:
    """The named query of sql/queries/, resolved at import: a typo fails at start."""
    return QUERIES[name]


# ---------------------------------------------------------------- responses
JSON = b"application/json"


class JSONBytes(Response):
    """Already-encoded JSON with pre-built headers: a cache hit returns stored bytes as is."""

    def __init__(self, body: bytes, status_code: int = 200, cache: bytes | None = None) -> None:
        self.status_code = status_code
        self.body = body
        self.background = None
        self.raw_headers = [(b"content-type", JSON), (b"content-length", b"%d" % len(body))]
        if cache is not None:
            self.raw_headers.append((b"x-cache", cache))


encode = msgspec.json.Encoder().encode  # one encoder, reused (msgspec's advice)


# ---------------------------------------------------------------- request parsing
def path_id(request: Request, name: str, maximum: int = models.BIGINT_MAX) -> int:
    """A positive integer path parameter within `maximum`, or 422 before any I/O."""
    raw: str = request.path_params[name]
    if raw.isascii() and raw.isdigit() and len(raw) <= 19:
        value = int(raw)
        if 1 <= value <= maximum:
            return value
    raise Problem(422, "VALIDATION_ERROR", f"{name} must be a positive integer up to {maximum}",
                  field=name)


async def read_body(request: Request, body_type: type[BodyT]) -> BodyT:
    """Decode and validate a JSON body: 415 unless JSON, 413 past 64 KiB, 400 if not JSON,
    422 if the JSON does not fit `body_type`."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise Problem(415, "UNSUPPORTED_MEDIA_TYPE", "send the body as application/json")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise Problem(413, "BODY_TOO_LARGE", f"the body may hold at most {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise Problem(413, "BODY_TOO_LARGE", f"the body may hold at most {MAX_BODY} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        decoded: BodyT = decoder(body_type).decode(body)
        return decoded
    except msgspec.ValidationError as error:
        # The typed decoder stops at the first misfit; JSON broken further on is still 400.
        try:
            ANY_JSON.decode(body)
        except MALFORMED as malformed:
            raise Problem(400, "MALFORMED_JSON", f"the body is not valid JSON: {malformed}") from None
        raise Problem(422, "VALIDATION_ERROR", str(error)) from None
    except MALFORMED as error:
        raise Problem(400, "MALFORMED_JSON", f"the body is not valid JSON: {error}") from None


@functools.cache
def decoder(body_type: type[BodyT]) -> msgspec.json.Decoder[BodyT]:
    """The typed decoder of `body_type`, built once: decoding is validation."""
    return msgspec.json.Decoder(body_type)


ANY_JSON = msgspec.json.Decoder()
# What decoding JSON raises for a body that is not JSON: invalid UTF-8 inside a string is a
# UnicodeDecodeError, and the untyped decoder gives up on absurd nesting with RecursionError.
MALFORMED = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


# ---------------------------------------------------------------- write tokens
@dataclass(frozen=True, slots=True)
class Caller:
    token_id: int
    role: str
    recharge_point_id: int | None


TOKEN_BY_HASH = query("token-by-hash")


@dataclass
class TokenCache:
    """Known tokens by sha256, kept briefly so that a write costs one database round trip."""

    entries: dict[bytes, tuple[float, Caller | None]] = field(default_factory=dict)

    async def caller(self, database: Database, token: str) -> Caller | None:
        digest = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        cached = self.entries.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        row = await database.run(TOKEN_BY_HASH, digest)
        found = None if row is None else Caller(row["token_id"], row["role"], row["recharge_point_id"])
        if len(self.entries) > 10_000:  # unknown tokens are cached too: bound the memory
            self.entries.clear()
        self.entries[digest] = (now + TOKEN_CACHE_SECONDS, found)
        return found


async def authorize(request: Request, *roles: str) -> Caller:
    """The caller behind `Authorization: Bearer`, if its role is one of `roles` (admin always)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if not hmac.compare_digest(scheme.lower().encode(), b"bearer") or not token:
        raise Problem(401, "UNAUTHORIZED", "send Authorization: Bearer <token>",
                      headers={"WWW-Authenticate": "Bearer"})
    state = request.state
    tokens: TokenCache = state.tokens
    caller = await tokens.caller(state.db, token)
    if caller is None:
        raise Problem(401, "UNAUTHORIZED", "unknown or revoked token",
                      headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    if caller.role != "admin" and caller.role not in roles:
        raise Problem(403, "FORBIDDEN", f"a {caller.role} token cannot do this")
    return caller


# ---------------------------------------------------------------- cache-aside
async def cached(request: Request, key: bytes, ttl: int, load: Callable[[], Awaitable[bytes]]) -> Response:
    """Serve `key` from Redis, or `load()` it from PostgreSQL and fill the cache (DESIGN §6)."""
    cache: Cache = request.state.cache
    # Shielded: the future is shared by every request for this key in this tick, and one
    # client going away must not cancel it for the others.
    lookup: Lookup = await asyncio.shield(cache.lookup(key))
    if lookup.value is not None:
        metrics.CACHE_HITS.inc()
        return JSONBytes(lookup.value, cache=b"HIT")
    metrics.CACHE_MISSES.inc()
    body = await load()
    await cache.fill(lookup, ttl, body)
    return JSONBytes(body, cache=b"MISS")


BUMP_CACHE_EPOCH = query("bump-cache-epoch")


async def invalidated(cache: Cache, database: Database, keys: Sequence[bytes]) -> None:
    """DEL what committed writes made stale, before their answers go out. If Redis did not
    take it, move every instance's cache to a new epoch, so that what Redis still holds is
    never read again. The writes have committed: their answers go out whatever happens here."""
    if await cache.invalidate(keys):
        return
    metrics.CACHE_ERRORS.inc()
    try:
        cache.epoch = max(cache.epoch, await database.run(BUMP_CACHE_EPOCH))
    except STATEMENT_ERRORS as error:
        log.error("cache epoch not bumped after a failed invalidation: %s", error.__class__.__name__)


# ---------------------------------------------------------------- reads
PING = query("ping")


async def health(request: Request) -> Response:
    state = request.state
    try:  # straight to the pool: a busy service is not a dead database
        await asyncio.wait_for(PING(state.db.pool), timeout=1.0)
        database = "ok"
    except DATABASE_ERRORS:
        database = "down"
    cache = "ok" if await state.cache.ping() else "down"
    status = "ok" if database == cache == "ok" else "degraded"
    answer = models.Health(status=status, database=database, cache=cache)  # type: ignore[arg-type]
    return JSONBytes(encode(answer), 200 if database == "ok" else 503)


def cached_read(path: str, summary: str, key: CachedKey, query_name: str, struct: type, *,
                many: bool = False, missing: str = "") -> Endpoint:
    """The declaration of a cached GET of what a named query finds, answered as `struct`
    (a list of them when `many`). With an id in the path it reads the primary (it must show
    a write as soon as that returned) and finding nothing is 404 `missing`; without one
    (aggregates, reference data) it may read a replica."""
    statement = query(query_name)
    if many:  # LEFT JOINs give one all-NULL row when nothing matched: not an item
        def answer(found: Any) -> Any:
            return [struct(*row) for row in found if row[0] is not None]
    else:
        def answer(found: Any) -> Any:
            return struct(*found)

    param = next((part[1:-1] for part in path.split("/") if part.startswith("{")), "")
    if param:
        async def read(request: Request) -> Response:
            item_id = path_id(request, param)

            async def load() -> bytes:
                found = await request.state.db.run(statement, item_id)
                if not found:
                    which: dict[str, Any] = {param: item_id}
                    raise Problem(404, missing, f"no {param.removesuffix('_id')} with this id", **which)
                return encode(answer(found))

            return await cached(request, key(item_id), key.ttl, load)
    else:
        fixed_key = key()

        async def read(request: Request) -> Response:
            async def load() -> bytes:
                return encode(answer(await request.state.lagging_db.run(statement)))

            return await cached(request, fixed_key, key.ttl, load)

    read.__name__ = query_name.replace("-", "_")
    return Endpoint("GET", path, read, summary, list[struct] if many else struct,  # type: ignore[valid-type]
                    errors=(404,) if param else (), cache=key)


USERS_COUNT = query("users-count")
USERS_ACTIVE_COUNT = query("users-active-count")
USERS_LATEST = query("users-latest")


async def users_count(request: Request) -> Response:
    return JSONBytes(encode(models.Count(await request.state.lagging_db.run(USERS_COUNT))))


async def users_active_count(request: Request) -> Response:
    return JSONBytes(encode(models.Count(await request.state.lagging_db.run(USERS_ACTIVE_COUNT))))


async def users_latest(request: Request) -> Response:
    rows = await request.state.lagging_db.run(USERS_LATEST)
    return JSONBytes(encode([models.User(*row) for row in rows]))


# ---------------------------------------------------------------- the dashboard's reads
TRIPS_HOURLY = query("trips-hourly")


async def trips_hourly(request: Request) -> Response:
    hours = hourly.hours_asked(request)

    async def load() -> bytes:
        return hourly.encode_hours(await request.state.lagging_db.run(TRIPS_HOURLY, hours))

    return await cached(request, cachekeys.trips_hourly(hours), cachekeys.trips_hourly.ttl, load)


async def instance_stats(request: Request) -> Response:
    return JSONBytes(encode(await stats.collect(request.state.db, request.state.cache)))


# ---------------------------------------------------------------- writes
IDEMPOTENCY_KEY_MAX = 255
CREATE_USER = query("create-user")
ISSUE_CARD = query("issue-card")
SET_CARD_STATUS = query("set-card-status")


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX or not key.isascii() or not key.isprintable():
        raise Problem(422, "VALIDATION_ERROR",
                      f"Idempotency-Key must be 1..{IDEMPOTENCY_KEY_MAX} printable ASCII characters",
                      field="Idempotency-Key")
    return key


async def create_recharge(request: Request) -> Response:
    caller = await authorize(request, "recharge_point")
    body = await read_body(request, models.RechargeRequest)
    key = idempotency_key(request)
    point = body.recharge_point_id
    if caller.role == "recharge_point":
        if point is not None and point != caller.recharge_point_id:
            raise Problem(403, "FORBIDDEN", "a recharge point token recharges at its own point only")
        point = caller.recharge_point_id
    # A replay invalidates too: it may answer before the first request's DEL has gone out.
    *answer, _, replayed = await request.state.recharges.submit(body.card_id, body.amount, point,
                                                                caller.token_id, key)
    response = JSONBytes(encode(models.Recharge(*answer)), 201)
    if replayed:
        response.raw_headers.append((b"idempotent-replayed", b"true"))
    return response


async def board(request: Request) -> Response:
    await authorize(request, "validator")
    body = await read_body(request, models.BoardRequest)
    row = await request.state.boardings.submit(body.card_id, body.route_id, body.boarding_station_id)
    return JSONBytes(encode(models.Boarding(*row)), 201)


async def end_trip(request: Request) -> Response:
    await authorize(request, "validator")
    trip_id = path_id(request, "trip_id")
    body = await read_body(request, models.EndTripRequest)
    row = await request.state.trip_ends.submit(trip_id, body.disembarking_station_id)
    return JSONBytes(encode(models.Trip(*row)))


async def create_user(request: Request) -> Response:
    await authorize(request)
    body = await read_body(request, models.UserRequest)
    row = await request.state.db.run(
        CREATE_USER, body.first_name, body.last_name, body.email, body.id_number,
        body.contact_number, body.gender, body.date_of_birth, body.residential_address, body.city_of_birth)
    return JSONBytes(encode(models.User(*row)), 201)


async def issue_card(request: Request) -> Response:
    await authorize(request)
    body = await read_body(request, models.CardRequest)
    row = await request.state.db.run(ISSUE_CARD, body.user_id, body.card_number)
    return JSONBytes(encode(models.Card(*row)), 201)


async def set_card_status(request: Request) -> Response:
    await authorize(request)
    card_id = path_id(request, "card_id")
    body = await read_body(request, models.CardStatusRequest)
    row = await request.state.db.run(SET_CARD_STATUS, card_id, body.status)
    await invalidated(request.state.cache, request.state.db, cachekeys.after_card_change(card_id))
    return JSONBytes(encode(models.Card(*row)))


# ---------------------------------------------------------------- errors
async def handle_http(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
    return Problem(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {})).response()


async def handle_overloaded(_: Request, exc: Exception) -> Response:
    metrics.OVERLOADED.inc()
    return Problem(503, "OVERLOADED", "too many requests wait for the database; retry shortly",
                   headers={"Retry-After": "1"}).response()


# ---------------------------------------------------------------- lifespan and app
PRUNE_IDEMPOTENCY_KEYS = query("prune-idempotency-keys")
CACHE_EPOCH = query("cache-epoch")


async def prune_idempotency_keys(database: Database) -> None:
    """Forget idempotency records past their retention: at start, then periodically."""
    while True:
        try:
            pruned = 0
            while True:
                batch = await database.run(PRUNE_IDEMPOTENCY_KEYS, IDEMPOTENCY_RETENTION, PRUNE_BATCH)
                pruned += batch
                if batch < PRUNE_BATCH:
                    break
            log.info("pruned %d idempotency records", pruned)
        except STATEMENT_ERRORS as error:
            log.warning("idempotency pruning failed: %s", error.__class__.__name__)
        await asyncio.sleep(PRUNE_EVERY_SECONDS)



def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app. Pools open in the lifespan, never at import; the schema is applied
    before (startup.py), once per start rather than once per worker."""
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        pools = [await db.create_pool(url, min_size=settings.pool_min, max_size=settings.pool_max)
                 for url in (settings.database_url, settings.read_database_url) if url]
        redis = connect(settings.redis_url, sentinels=settings.redis_sentinels,
                        service=settings.redis_sentinel_service)
        database = Database(pools[0], settings.max_waiting)
        # Aggregates, counts and reference data may come from a replica; balances, trips,
        # recharges and every write stay on the primary.
        lagging_database = Database(pools[1], settings.max_waiting) if len(pools) > 1 else database
        cache = Cache(redis, await database.run(CACHE_EPOCH))
        metrics.watch_pool(database)

        def on_epoch(payload: str) -> None:
            cache.epoch = max(cache.epoch, int(payload))

        async def read_epoch(conn: asyncpg.Connection) -> None:
            on_epoch(str(await CACHE_EPOCH(conn)))

        epochs = db.Listener(settings.listen_database_url or settings.database_url, "cache_epoch",
                             on_epoch, read_epoch)
        background = [asyncio.create_task(epochs.run()),
                      asyncio.create_task(prune_idempotency_keys(database))]
        try:
            yield {"db": database, "lagging_db": lagging_database, "cache": cache,
                   "tokens": TokenCache(), "epochs": epochs,
                   **batching.write_batchers(database, functools.partial(invalidated, cache, database))}
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            # Requests have drained by now; closing must finish even if we are cancelled.
            await asyncio.shield(asyncio.gather(*(db.close_pool(pool) for pool in pools), redis.aclose(),
                                                return_exceptions=True))

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        middleware=[metrics.middleware()],
        exception_handlers={
            Problem: handle_problem,
            HTTPException: handle_http,
            Overloaded: handle_overloaded,
            asyncpg.PostgresError: handle_postgres,
            **{error: handle_unavailable for error in DATABASE_UNAVAILABLE_ERRORS},
            Exception: handle_unexpected,
        },
    )
    app.router.redirect_slashes = False  # its redirect would echo the Host header (DESIGN §10)
    return app


# ---------------------------------------------------------------- the route table
ADMIN: tuple[str, ...] = ()
ENDPOINTS = [
    Endpoint("GET", f"{API}/health", health, "Liveness of the API, PostgreSQL and Redis",
             models.Health, errors=(503,)),
    cached_read(f"{API}/trips/total", "Trip totals and revenue",
                cachekeys.trips_total, "trips-total", models.TripsTotal),
    cached_read(f"{API}/trips/total/localities", "Trips per locality",
                cachekeys.trips_by_locality, "trips-by-locality", models.LocalityTrips, many=True),
    # Before /trips/{trip_id}, which would take "hourly" for an id.
    Endpoint("GET", f"{API}/trips/hourly", trips_hourly, "Trips and revenue per hour (Bogotá), the last N hours",
             list[models.HourTrips], cache=cachekeys.trips_hourly,
             query=(("hours", {"type": "integer", "minimum": 1, "maximum": hourly.MAX_HOURS,
                               "default": hourly.DEFAULT_HOURS}),)),
    Endpoint("GET", f"{API}/stats", instance_stats, "This instance: request rates, latency, cache, Redis, pool",
             models.Stats),
    cached_read(f"{API}/trips/card/{{card_id}}", "A card's 20 latest trips",
                cachekeys.card_trips, "card-trips", models.Trip, many=True, missing="CARD_NOT_FOUND"),
    cached_read(f"{API}/trips/{{trip_id}}", "One trip",
                cachekeys.trip, "trip", models.Trip, missing="TRIP_NOT_FOUND"),
    Endpoint("POST", f"{API}/trips", board, "Board: debit the fare (or the transfer fare)",
             models.Boarding, 201, models.BoardRequest, (402, 404, 409), ("validator",)),
    Endpoint("POST", f"{API}/trips/{{trip_id}}/end", end_trip, "Alight: close an open trip",
             models.Trip, 200, models.EndTripRequest, (404, 409), ("validator",)),
    cached_read(f"{API}/finance/revenue", "Revenue: the fares boardings debited",
                cachekeys.revenue_total, "revenue-total", models.Revenue),
    cached_read(f"{API}/finance/revenue/localities", "Revenue per locality",
                cachekeys.revenue_by_locality, "revenue-by-locality", models.LocalityRevenue, many=True),
    Endpoint("POST", f"{API}/cards", issue_card, "Issue a card (balance 0, active)",
             models.Card, 201, models.CardRequest, (404, 409), ADMIN),
    Endpoint("PATCH", f"{API}/cards/{{card_id}}", set_card_status, "Set a card's status (block a lost card)",
             models.Card, 200, models.CardStatusRequest, (404,), ADMIN),
    cached_read(f"{API}/cards/{{card_id}}/balance", "A card's balance and status",
                cachekeys.card_balance, "card-balance", models.CardBalance, missing="CARD_NOT_FOUND"),
    Endpoint("POST", f"{API}/recharges", create_recharge, "Recharge a card (Idempotency-Key replays)",
             models.Recharge, 201, models.RechargeRequest, (404, 409), ("recharge_point",),
             headers=("Idempotency-Key",)),
    Endpoint("POST", f"{API}/users", create_user, "Register a user",
             models.User, 201, models.UserRequest, (409,), ADMIN),
    Endpoint("GET", f"{API}/users/count", users_count, "How many users", models.Count),
    Endpoint("GET", f"{API}/users/active/count", users_active_count,
             "How many users hold an active card", models.Count),
    Endpoint("GET", f"{API}/users/latest", users_latest, "The 10 latest registrations", list[models.User]),
    cached_read(f"{API}/users/{{user_id}}/recharges", "A user's 20 latest recharges",
                cachekeys.user_recharges, "user-recharges", models.UserRecharge, many=True,
                missing="USER_NOT_FOUND"),
    cached_read(f"{API}/routes", "Every route", cachekeys.routes_all, "routes-all", models.Route, many=True),
    cached_read(f"{API}/stations", "Every station", cachekeys.stations_all, "stations-all", models.Station,
                many=True),
]
ROUTES: list[BaseRoute] = [
    *(endpoint.route() for endpoint in ENDPOINTS),
    Route("/metrics", metrics.endpoint, methods=["GET"]),
    *dashboard.routes(),
    *openapi.routes(ENDPOINTS, "Travel Recharge API", "1.0.0"),
]


if __name__ == "__main__":
    import startup

    startup.main()
