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
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

import auth
import batching
import cachekeys
import dashboard
import db
import hourly
import logs
import metrics
import models
import openapi
import stats
from auth import TokenCache, authorize, new_token
from cache import Cache, Lookup, connect
from cachekeys import CachedKey
from db import QUERIES, Database, Overloaded, Query
from endpoints import Endpoint, ShapeRouter
from errors import (
    DATABASE_ERRORS,
    DATABASE_UNAVAILABLE_ERRORS,
    Problem,
    handle_postgres,
    handle_problem,
    handle_unavailable,
    handle_unexpected,
)
from settings import Settings

log = logging.getLogger("travel.api")
BodyT = TypeVar("BodyT", bound=models.Body)

MAX_BODY = 64 * 1024
# A retry of a recharge is answered from its first answer for this long (Stripe keeps 24 h).
IDEMPOTENCY_RETENTION = datetime.timedelta(hours=24)
PRUNE_EVERY_SECONDS = 600.0
PRUNE_BATCH = 5000
GC_ALLOCATIONS = 50_000  # net allocations between young-generation collections (default 700)
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
    raise Problem(422, "VALIDATION_ERROR", f"{name} must be a positive integer up to {maximum}", field=name)


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


# ---------------------------------------------------------------- cache-aside
async def cached(request: Request, key: bytes, ttl: int, load: Callable[[], Awaitable[bytes]]) -> Response:
    """Serve `key` from Redis, or `load()` it from PostgreSQL and fill the cache (docs/design.md: cache-aside)."""
    cache: Cache = request.state.cache
    # Shielded: the future is shared by every request for this key in this tick, and one
    # client going away must not cancel it for the others.
    lookup: Lookup = await asyncio.shield(cache.lookup(key))
    if lookup.value is not None:
        metrics.CACHE_HITS.inc()
        return JSONBytes(lookup.value, cache=b"HIT")
    metrics.CACHE_MISSES.inc()
    return JSONBytes(await cache.load(lookup, ttl, load), cache=b"MISS")


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


def cached_read(
    path: str,
    summary: str,
    key: CachedKey,
    query_name: str,
    struct: type,
    *,
    many: bool = False,
    missing: str = "",
    roles: tuple[str, ...] | None = None,
) -> Endpoint:
    """The declaration of a cached GET of what a named query finds, answered as `struct`
    (a list of them when `many`). With an id in the path it reads the primary (it must show
    a write as soon as that returned) and finding nothing is 404 `missing`; without one
    (aggregates, reference data) it may read a replica. With `roles`, a bearer token of
    one of them (or admin) is checked before anything is read."""
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
            if roles is not None:
                await authorize(request, *roles)
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
    return Endpoint(
        "GET",
        path,
        read,
        summary,
        list[struct] if many else struct,  # type: ignore[valid-type]
        errors=(404,) if param else (),
        roles=roles,
        cache=key,
    )


USERS_COUNT = query("users-count")
USERS_ACTIVE_COUNT = query("users-active-count")
USERS_LATEST = query("users-latest")


async def users_count(request: Request) -> Response:
    return JSONBytes(encode(models.Count(await request.state.lagging_db.run(USERS_COUNT))))


async def users_active_count(request: Request) -> Response:
    return JSONBytes(encode(models.Count(await request.state.lagging_db.run(USERS_ACTIVE_COUNT))))


async def users_latest(request: Request) -> Response:
    await authorize(request)
    rows = await request.state.lagging_db.run(USERS_LATEST)
    return JSONBytes(encode([models.User(*row) for row in rows]))


# ---------------------------------------------------------------- the dashboard's reads
TRIPS_HOURLY = query("trips-hourly")


async def trips_hourly(request: Request) -> Response:
    hours = hourly.hours_asked(request)

    async def load() -> bytes:
        return encode(hourly.hours_of(await request.state.lagging_db.run(TRIPS_HOURLY, hours)))

    return await cached(request, cachekeys.trips_hourly(hours), cachekeys.trips_hourly.ttl, load)


async def instance_stats(request: Request) -> Response:
    return JSONBytes(encode(await stats.collect(request.state.db, request.state.cache)))


# ---------------------------------------------------------------- writes
IDEMPOTENCY_KEY_MAX = 255
CREATE_USER = query("create-user")
ISSUE_CARD = query("issue-card")
SET_CARD_STATUS = query("set-card-status")


def idempotency_key(request: Request) -> str | None:
    """The request's key, refused (422) when repeated or when spaces surround it: a proxy that
    drops one of two headers, or trims a space, between a request and its retry would
    otherwise turn the retry into a second recharge."""
    keys = request.headers.getlist("idempotency-key")
    if not keys:
        return None
    key = keys[0]
    if len(keys) > 1:
        raise Problem(422, "VALIDATION_ERROR", "send one Idempotency-Key header, not several", field="Idempotency-Key")
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX or not key.isascii() or not key.isprintable() or key != key.strip():
        raise Problem(
            422,
            "VALIDATION_ERROR",
            f"Idempotency-Key must be 1..{IDEMPOTENCY_KEY_MAX} printable ASCII characters,"
            " without leading or trailing spaces",
            field="Idempotency-Key",
        )
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
    *answer, _, replayed = await request.state.recharges.submit(body.card_id, body.amount, point, caller.token_id, key)
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
        CREATE_USER,
        body.first_name,
        body.last_name,
        body.email,
        body.id_number,
        body.contact_number,
        body.gender,
        body.date_of_birth,
        body.residential_address,
        body.city_of_birth,
    )
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


# ---------------------------------------------------------------- write tokens (admin)
CREATE_TOKEN = query("create-token")
TOKENS_LIVE = query("tokens-live")
REVOKE_TOKEN = query("revoke-token")


async def create_token(request: Request) -> Response:
    await authorize(request)
    body = await read_body(request, models.TokenRequest)
    token, token_digest = new_token()
    row = await request.state.db.run(CREATE_TOKEN, token_digest, body.role, body.label, body.recharge_point_id)
    response = JSONBytes(encode(models.NewToken(**row, token=token)), 201)
    response.raw_headers.append((b"cache-control", b"no-store"))  # the secret, shown this once
    return response


async def list_tokens(request: Request) -> Response:
    await authorize(request)
    return JSONBytes(encode([models.TokenInfo(*row) for row in await request.state.db.run(TOKENS_LIVE)]))


async def revoke_token(request: Request) -> Response:
    await authorize(request)
    token_id = path_id(request, "token_id", models.INT_MAX)
    await request.state.db.run(REVOKE_TOKEN, token_id)
    request.state.tokens.forget(token_id)  # here before answering; other instances on its NOTIFY
    return Response(status_code=204)


# ---------------------------------------------------------------- errors
async def handle_http(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
    return Problem(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {})).response()


async def handle_overloaded(_: Request, exc: Exception) -> Response:
    metrics.OVERLOADED.inc()
    return Problem(
        503, "OVERLOADED", "too many requests wait for the database; retry shortly", headers={"Retry-After": "1"}
    ).response()


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
    logs.ACCESS_LOG.share_with_workers(settings.workers > 1)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        pools = [
            await db.create_pool(url, min_size=settings.pool_min, max_size=settings.pool_max)
            for url in (settings.database_url, settings.read_database_url)
            if url
        ]
        redis = connect(settings.redis_url, sentinels=settings.redis_sentinels, service=settings.redis_sentinel_service)
        database = Database(pools[0], settings.max_waiting)
        # Aggregates, counts and reference data may come from a replica; balances, trips,
        # recharges and every write stay on the primary.
        lagging_database = Database(pools[1], settings.max_waiting) if len(pools) > 1 else database
        cache = Cache(redis, await database.run(CACHE_EPOCH))
        metrics.watch_pool(database)

        tokens = TokenCache()

        def on_epoch(payload: str) -> None:
            cache.epoch = max(cache.epoch, int(payload))

        async def catch_up(conn: asyncpg.Connection) -> None:  # what went unheard while disconnected
            on_epoch(str(await CACHE_EPOCH(conn)))
            tokens.forget_all()

        listener = db.Listener(
            settings.listen_database_url or settings.database_url,
            {"cache_epoch": on_epoch, auth.REVOCATIONS_CHANNEL: tokens.forget},
            catch_up,
        )
        background = [asyncio.create_task(listener.run()), asyncio.create_task(prune_idempotency_keys(database))]
        # A request allocates hundreds of short-lived objects, nearly all freed by their
        # reference counts; at the default threshold (700) the cyclic collector ran every few
        # requests and cost ~13 % of cache-hit throughput. Objects made so far live as long as
        # the worker: freeze them out of every collection.
        gc.set_threshold(GC_ALLOCATIONS, *gc.get_threshold()[1:])
        gc.freeze()
        try:
            yield {
                "db": database,
                "lagging_db": lagging_database,
                "cache": cache,
                "tokens": tokens,
                "listener": listener,
                **batching.write_batchers(database, functools.partial(invalidated, cache, database)),
            }
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            logs.ACCESS_LOG.flush()
            metrics.forget_worker()
            # Requests have drained by now; closing must finish even if we are cancelled.
            await asyncio.shield(
                asyncio.gather(*(db.close_pool(pool) for pool in pools), redis.aclose(), return_exceptions=True)
            )

    app = Starlette(
        middleware=[metrics.middleware(settings.access_log)],
        exception_handlers={
            Problem: handle_problem,
            HTTPException: handle_http,
            Overloaded: handle_overloaded,
            asyncpg.PostgresError: handle_postgres,
            **{error: handle_unavailable for error in DATABASE_UNAVAILABLE_ERRORS},
            Exception: handle_unexpected,
        },
    )
    app.router = ShapeRouter(ROUTES, lifespan)
    return app


# ---------------------------------------------------------------- the route table
ADMIN: tuple[str, ...] = ()
ENDPOINTS = [
    Endpoint(
        "GET",
        f"{API}/health",
        health,
        "Liveness of the API, PostgreSQL and Redis",
        models.Health,
        errors=(503,),
        unavailable=models.Health,
        notes="200 while PostgreSQL answers: `status` ok, or degraded with `cache` down (reads then come"
        " from PostgreSQL). 503 with `database` down when PostgreSQL cannot be reached.",
    ),
    cached_read(
        f"{API}/trips/total", "Trip totals and revenue", cachekeys.trips_total, "trips-total", models.TripsTotal
    ),
    cached_read(
        f"{API}/trips/total/localities",
        "Trips per locality",
        cachekeys.trips_by_locality,
        "trips-by-locality",
        models.LocalityTrips,
        many=True,
    ),
    # Before /trips/{trip_id}, which would take "hourly" for an id.
    Endpoint(
        "GET",
        f"{API}/trips/hourly",
        trips_hourly,
        "Trips and revenue per hour (Bogotá), the last N hours",
        list[models.HourTrips],
        cache=cachekeys.trips_hourly,
        query=(
            ("hours", {"type": "integer", "minimum": 1, "maximum": hourly.MAX_HOURS, "default": hourly.DEFAULT_HOURS}),
        ),
    ),
    Endpoint(
        "GET", f"{API}/stats", instance_stats, "This instance: request rates, latency, cache, Redis, pool", models.Stats
    ),
    cached_read(
        f"{API}/trips/card/{{card_id}}",
        "A card's 20 latest trips",
        cachekeys.card_trips,
        "card-trips",
        models.Trip,
        many=True,
        missing="CARD_NOT_FOUND",
    ),
    cached_read(f"{API}/trips/{{trip_id}}", "One trip", cachekeys.trip, "trip", models.Trip, missing="TRIP_NOT_FOUND"),
    Endpoint(
        "POST",
        f"{API}/trips",
        board,
        "Board: debit the fare (or the transfer fare)",
        models.Boarding,
        201,
        models.BoardRequest,
        (402, 404, 409),
        ("validator",),
    ),
    Endpoint(
        "POST",
        f"{API}/trips/{{trip_id}}/end",
        end_trip,
        "Alight: close an open trip",
        models.Trip,
        200,
        models.EndTripRequest,
        (404, 409),
        ("validator",),
    ),
    cached_read(
        f"{API}/finance/revenue",
        "Revenue: the fares boardings debited",
        cachekeys.revenue_total,
        "revenue-total",
        models.Revenue,
    ),
    cached_read(
        f"{API}/finance/revenue/localities",
        "Revenue per locality",
        cachekeys.revenue_by_locality,
        "revenue-by-locality",
        models.LocalityRevenue,
        many=True,
    ),
    Endpoint(
        "POST",
        f"{API}/cards",
        issue_card,
        "Issue a card (balance 0, active)",
        models.Card,
        201,
        models.CardRequest,
        (404, 409),
        ADMIN,
    ),
    Endpoint(
        "PATCH",
        f"{API}/cards/{{card_id}}",
        set_card_status,
        "Set a card's status (block a lost card)",
        models.Card,
        200,
        models.CardStatusRequest,
        (404,),
        ADMIN,
    ),
    cached_read(
        f"{API}/cards/{{card_id}}/balance",
        "A card's balance and status",
        cachekeys.card_balance,
        "card-balance",
        models.CardBalance,
        missing="CARD_NOT_FOUND",
    ),
    Endpoint(
        "POST",
        f"{API}/recharges",
        create_recharge,
        "Recharge a card (Idempotency-Key replays)",
        models.Recharge,
        201,
        models.RechargeRequest,
        (404, 409),
        ("recharge_point",),
        headers=("Idempotency-Key",),
    ),
    Endpoint(
        "POST", f"{API}/users", create_user, "Register a user", models.User, 201, models.UserRequest, (409,), ADMIN
    ),
    Endpoint("GET", f"{API}/users/count", users_count, "How many users", models.Count),
    Endpoint(
        "GET", f"{API}/users/active/count", users_active_count, "How many users hold an active card", models.Count
    ),
    # These two name a person: admin only (a public answer never does).
    Endpoint("GET", f"{API}/users/latest", users_latest, "The 10 latest registrations", list[models.User], roles=ADMIN),
    cached_read(
        f"{API}/users/{{user_id}}/recharges",
        "A user's 20 latest recharges",
        cachekeys.user_recharges,
        "user-recharges",
        models.UserRecharge,
        many=True,
        missing="USER_NOT_FOUND",
        roles=ADMIN,
    ),
    cached_read(f"{API}/routes", "Every route", cachekeys.routes_all, "routes-all", models.Route, many=True),
    cached_read(f"{API}/stations", "Every station", cachekeys.stations_all, "stations-all", models.Station, many=True),
    Endpoint(
        "POST",
        f"{API}/tokens",
        create_token,
        "Make a write token: its secret is shown this once",
        models.NewToken,
        201,
        models.TokenRequest,
        (404,),
        ADMIN,
    ),
    Endpoint(
        "GET",
        f"{API}/tokens",
        list_tokens,
        "Every live token (never a secret or hash)",
        list[models.TokenInfo],
        roles=ADMIN,
    ),
    Endpoint(
        "DELETE",
        f"{API}/tokens/{{token_id}}",
        revoke_token,
        "Revoke a token, on every instance at once (not the last admin token)",
        None,
        204,
        errors=(404, 409),
        roles=ADMIN,
    ),
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
