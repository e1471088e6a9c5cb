"""Travel Recharge API: Starlette routes over hand-written SQL (asyncpg) and a Redis cache.

`python server.py` serves. Without DATABASE_URL / REDIS_URL it first starts the embedded
default (a private PostgreSQL and Redis under ./.data), applies sql/, loads demo data on
first start and prints a write token. The route table is at the bottom of this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import hmac
import logging
import logging.config
import os
import secrets
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

import cachekeys
import db
import docs
import logs
import metrics
import models
from cache import Cache, Lookup, connect
from db import QUERIES, Database, Overloaded
from docs import Operation
from errors import (
    DATABASE_UNAVAILABLE_ERRORS, Problem, handle_postgres, handle_problem,
    handle_unavailable, handle_unexpected,
)
from localstack import LocalStack, write_secret

log = logging.getLogger("travel.api")
BodyT = TypeVar("BodyT", bound=models.Body)

MAX_BODY = 64 * 1024
TOKEN_CACHE_SECONDS = 30.0  # a revoked token stops working within this long
# A retry of a recharge is answered from its first answer for this long (Stripe keeps 24 h).
IDEMPOTENCY_RETENTION = datetime.timedelta(hours=24)
PRUNE_EVERY_SECONDS = 600.0
PRUNE_BATCH = 5000
API = "/api/v1"


# ---------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Settings:
    """Configuration from the environment (DESIGN §3)."""

    database_url: str
    redis_url: str
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    demo_scale: int | None = None
    admin_token: str | None = None
    log_level: str = "info"
    access_log: bool = True  # ACCESS_LOG=off: no request log, whatever LOG_LEVEL says
    read_database_url: str = ""  # a streaming replica for the reads that tolerate lag
    # LISTEN needs a session of its own: behind a transaction-pooling PgBouncer, point this
    # at PostgreSQL directly (default: database_url).
    listen_database_url: str = ""
    redis_sentinels: str = ""  # host:port,host:port: find the Redis primary through Sentinel
    redis_sentinel_service: str = "travel"
    pool_min: int = 4
    pool_max: int = 16
    max_waiting: int = 256  # requests queued for a connection before 503 OVERLOADED

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        env = os.environ
        values: dict[str, Any] = {
            "database_url": env.get("DATABASE_URL", ""),
            "redis_url": env.get("REDIS_URL", ""),
            "host": env.get("HOST", "127.0.0.1"),
            "port": int(env.get("PORT", "8000")),
            "workers": int(env.get("WORKERS", "1")),
            "demo_scale": int(env["DEMO_SCALE"]) if env.get("DEMO_SCALE") else None,
            "admin_token": env.get("ADMIN_TOKEN") or None,
            "log_level": env.get("LOG_LEVEL", "info").lower(),
            "access_log": env.get("ACCESS_LOG", "on").lower() != "off",
            "read_database_url": env.get("READ_DATABASE_URL", ""),
            "listen_database_url": env.get("LISTEN_DATABASE_URL", ""),
            "redis_sentinels": env.get("REDIS_SENTINELS", ""),
            "redis_sentinel_service": env.get("REDIS_SENTINEL_SERVICE", "travel"),
            "pool_min": int(env.get("POOL_MIN", "4")),
            "pool_max": int(env.get("POOL_MAX", "16")),
            "max_waiting": int(env.get("MAX_WAITING", "256")),
        }
        values.update(overrides)
        return cls(**values)


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


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


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
        return msgspec.json.decode(body, type=body_type)
    except msgspec.ValidationError as error:
        # The typed decoder stops at the first misfit; JSON broken further on is still 400.
        try:
            msgspec.json.decode(body)
        except MALFORMED as malformed:
            raise Problem(400, "MALFORMED_JSON", f"the body is not valid JSON: {malformed}") from None
        raise Problem(422, "VALIDATION_ERROR", str(error)) from None
    except MALFORMED as error:
        raise Problem(400, "MALFORMED_JSON", f"the body is not valid JSON: {error}") from None


# What decoding JSON raises for a body that is not JSON: invalid UTF-8 inside a string is a
# UnicodeDecodeError, and the untyped decoder gives up on absurd nesting with RecursionError.
MALFORMED = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


# ---------------------------------------------------------------- write tokens
@dataclass(frozen=True, slots=True)
class Caller:
    token_id: int
    role: str
    recharge_point_id: int | None


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
        row = await database.run(QUERIES["token-by-hash"], digest)
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
    caller = await state.tokens.caller(state.db, token)
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
    return JSONBytes(await cache.load(lookup, ttl, load), cache=b"MISS")


async def invalidated(request: Request, keys: tuple[bytes, ...]) -> None:
    """DEL what a committed write made stale, before its answer goes out. If Redis did not
    take it, move every instance's cache to a new epoch, so that what Redis still holds is
    never read again. The write has committed: its answer goes out whatever happens here."""
    cache: Cache = request.state.cache
    if await cache.invalidate(keys):
        return
    metrics.CACHE_ERRORS.inc()
    try:
        cache.epoch = max(cache.epoch, await request.state.db.run(QUERIES["bump-cache-epoch"]))
    except (Overloaded, asyncpg.PostgresError, *DATABASE_UNAVAILABLE_ERRORS) as error:
        log.error("cache epoch not bumped after a failed invalidation: %s", error.__class__.__name__)


# ---------------------------------------------------------------- reads
async def health(request: Request) -> Response:
    state = request.state
    try:  # straight to the pool: a busy service is not a dead database
        await asyncio.wait_for(QUERIES["ping"](state.db.pool), timeout=1.0)
        database = "ok"
    except (asyncpg.PostgresError, *DATABASE_UNAVAILABLE_ERRORS):
        database = "down"
    cache = "ok" if await state.cache.ping() else "down"
    status = "ok" if database == cache == "ok" else "degraded"
    answer = models.Health(status=status, database=database, cache=cache)  # type: ignore[arg-type]
    return JSONBytes(encode(answer), 200 if database == "ok" else 503)


Handler = Callable[[Request], Awaitable[Response]]


def cached_read_by_id(name: str, param: str, key: Callable[[int], bytes], ttl: int, query: str,
                      answer: Callable[[Any], Any], missing: str) -> Handler:
    """A cached read of what `query` finds for the id in the path; nothing found is 404 `missing`.
    These read the primary: they must show a write as soon as it has returned."""

    async def read(request: Request) -> Response:
        item_id = path_id(request, param)

        async def load() -> bytes:
            found = await request.state.db.run(QUERIES[query], item_id)
            if not found:
                raise Problem(404, missing, f"no {param.removesuffix('_id')} with this id", **{param: item_id})
            return encode(answer(found))

        return await cached(request, key(item_id), ttl, load)

    read.__name__ = name
    return read


def cached_read(name: str, key: bytes, ttl: int, query: str, answer: Callable[[Any], Any]) -> Handler:
    """A cached read of an aggregate or of reference data: it may come from a replica."""

    async def read(request: Request) -> Response:
        async def load() -> bytes:
            return encode(answer(await request.state.lagging_db.run(QUERIES[query])))

        return await cached(request, key, ttl, load)

    read.__name__ = name
    return read


def each(struct: type) -> Callable[[Any], list[Any]]:
    """Rows to Structs, skipping the all-NULL row of a LEFT JOIN that found nothing."""
    return lambda rows: [struct(*row) for row in rows if row[0] is not None]


def one(struct: type) -> Callable[[Any], Any]:
    return lambda row: struct(*row)


get_trip = cached_read_by_id("get_trip", "trip_id", cachekeys.trip, cachekeys.TRIP_TTL, "trip",
                             one(models.Trip), "TRIP_NOT_FOUND")
card_trips = cached_read_by_id("card_trips", "card_id", cachekeys.card_trips, cachekeys.CARD_TRIPS_TTL,
                               "card-trips", each(models.Trip), "CARD_NOT_FOUND")
card_balance = cached_read_by_id("card_balance", "card_id", cachekeys.card_balance, cachekeys.CARD_BALANCE_TTL,
                                 "card-balance", one(models.CardBalance), "CARD_NOT_FOUND")
user_recharges = cached_read_by_id("user_recharges", "user_id", cachekeys.user_recharges,
                                   cachekeys.USER_RECHARGES_TTL, "user-recharges", each(models.UserRecharge),
                                   "USER_NOT_FOUND")
trips_total = cached_read("trips_total", cachekeys.TRIPS_TOTAL, cachekeys.TRIPS_TOTAL_TTL, "trips-total",
                          one(models.TripsTotal))
trips_by_locality = cached_read("trips_by_locality", cachekeys.TRIPS_TOTAL_BY_LOCALITY, cachekeys.TRIPS_TOTAL_TTL,
                                "trips-by-locality", each(models.LocalityTrips))
revenue_total = cached_read("revenue_total", cachekeys.REVENUE_TOTAL, cachekeys.REVENUE_TTL, "revenue-total",
                            one(models.Revenue))
revenue_by_locality = cached_read("revenue_by_locality", cachekeys.REVENUE_BY_LOCALITY, cachekeys.REVENUE_TTL,
                                  "revenue-by-locality", each(models.LocalityRevenue))
routes_all = cached_read("routes_all", cachekeys.ROUTES_ALL, cachekeys.REFERENCE_TTL, "routes-all",
                         each(models.Route))
stations_all = cached_read("stations_all", cachekeys.STATIONS_ALL, cachekeys.REFERENCE_TTL, "stations-all",
                           each(models.Station))


async def users_count(request: Request) -> Response:
    return JSONBytes(encode(models.Count(await request.state.lagging_db.run(QUERIES["users-count"]))))


async def users_active_count(request: Request) -> Response:
    return JSONBytes(encode(models.Count(await request.state.lagging_db.run(QUERIES["users-active-count"]))))


async def users_latest(request: Request) -> Response:
    rows = await request.state.lagging_db.run(QUERIES["users-latest"])
    return JSONBytes(encode([models.User(*row) for row in rows]))


# ---------------------------------------------------------------- writes
IDEMPOTENCY_KEY_MAX = 255


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
    row = await request.state.db.run(QUERIES["recharge"], body.card_id, body.amount, point,
                                     caller.token_id, key)
    *answer, user_id, replayed = row
    # A replay invalidates too: it may answer before the first request's DEL has gone out.
    await invalidated(request, cachekeys.after_recharge(body.card_id, user_id))
    response = JSONBytes(encode(models.Recharge(*answer)), 201)
    if replayed:
        response.raw_headers.append((b"idempotent-replayed", b"true"))
    return response


async def board(request: Request) -> Response:
    await authorize(request, "validator")
    body = await read_body(request, models.BoardRequest)
    row = await request.state.db.run(QUERIES["board"], body.card_id, body.route_id, body.boarding_station_id)
    await invalidated(request, cachekeys.after_boarding(body.card_id))
    return JSONBytes(encode(models.Boarding(*row)), 201)


async def end_trip(request: Request) -> Response:
    await authorize(request, "validator")
    trip_id = path_id(request, "trip_id")
    body = await read_body(request, models.EndTripRequest)
    row = await request.state.db.run(QUERIES["end-trip"], trip_id, body.disembarking_station_id)
    trip = models.Trip(*row)
    await invalidated(request, cachekeys.after_trip_end(trip_id, trip.card_id))
    return JSONBytes(encode(trip))


async def create_user(request: Request) -> Response:
    await authorize(request)
    body = await read_body(request, models.UserRequest)
    row = await request.state.db.run(
        QUERIES["create-user"], body.first_name, body.last_name, body.email, body.id_number,
        body.contact_number, body.gender, body.date_of_birth, body.residential_address, body.city_of_birth)
    return JSONBytes(encode(models.User(*row)), 201)


async def issue_card(request: Request) -> Response:
    await authorize(request)
    body = await read_body(request, models.CardRequest)
    row = await request.state.db.run(QUERIES["issue-card"], body.user_id, body.card_number)
    return JSONBytes(encode(models.Card(*row)), 201)


async def set_card_status(request: Request) -> Response:
    await authorize(request)
    card_id = path_id(request, "card_id")
    body = await read_body(request, models.CardStatusRequest)
    row = await request.state.db.run(QUERIES["set-card-status"], card_id, body.status)
    await invalidated(request, cachekeys.after_card_change(card_id))
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
async def prune_idempotency_keys(database: Database) -> None:
    """Forget idempotency records past their retention: at start, then periodically."""
    while True:
        try:
            pruned = 0
            while True:
                batch = await database.run(QUERIES["prune-idempotency-keys"], IDEMPOTENCY_RETENTION, PRUNE_BATCH)
                pruned += batch
                if batch < PRUNE_BATCH:
                    break
            log.info("pruned %d idempotency records", pruned)
        except (Overloaded, asyncpg.PostgresError, *DATABASE_UNAVAILABLE_ERRORS) as error:
            log.warning("idempotency pruning failed: %s", error.__class__.__name__)
        await asyncio.sleep(PRUNE_EVERY_SECONDS)



async def prepare_database(settings: Settings) -> None:
    """Apply sql/ (a no-op when current) and register ADMIN_TOKEN, on one connection."""
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        await db.apply_schema(conn)
        if settings.admin_token:
            await QUERIES["register-token"](conn, hashlib.sha256(settings.admin_token.encode()).digest(),
                                            "admin", "ADMIN_TOKEN", None)
    finally:
        await conn.close()


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app. Pools open in the lifespan, never at import."""
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        await prepare_database(settings)
        pools = [await db.create_pool(url, min_size=settings.pool_min, max_size=settings.pool_max)
                 for url in (settings.database_url, settings.read_database_url) if url]
        redis = connect(settings.redis_url, sentinels=settings.redis_sentinels,
                        service=settings.redis_sentinel_service)
        database = Database(pools[0], settings.max_waiting)
        # Aggregates, counts and reference data may come from a replica; balances, trips,
        # recharges and every write stay on the primary.
        lagging_database = Database(pools[1], settings.max_waiting) if len(pools) > 1 else database
        cache = Cache(redis, await database.run(QUERIES["cache-epoch"]))
        metrics.watch_pool(database)

        def on_epoch(payload: str) -> None:
            cache.epoch = max(cache.epoch, int(payload))

        async def read_epoch(conn: asyncpg.Connection) -> None:
            on_epoch(str(await QUERIES["cache-epoch"](conn)))

        epochs = db.Listener(settings.listen_database_url or settings.database_url, "cache_epoch",
                             on_epoch, read_epoch)
        background = [asyncio.create_task(epochs.run()),
                      asyncio.create_task(prune_idempotency_keys(database))]
        try:
            yield {"db": database, "lagging_db": lagging_database, "cache": cache,
                   "tokens": TokenCache(), "settings": settings, "epochs": epochs}
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            logs.ACCESS_LOG.flush()
            metrics.forget_worker()
            # Requests have drained by now; closing must finish even if we are cancelled.
            await asyncio.shield(asyncio.gather(*(pool.close() for pool in pools), redis.aclose(),
                                                return_exceptions=True))

    return Starlette(
        routes=ROUTES,
        lifespan=lifespan,
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


ADMIN: tuple[str, ...] = ()
NOT_FOUND = (404,)
OPERATIONS = [
    Operation("GET", f"{API}/health", health, "Liveness of the API, PostgreSQL and Redis",
              models.Health, errors=(503,)),
    Operation("GET", f"{API}/trips/total", trips_total, "Trip totals and revenue",
              models.TripsTotal, cache="trips:total · 300 s"),
    Operation("GET", f"{API}/trips/total/localities", trips_by_locality, "Trips per locality",
              list[models.LocalityTrips], cache="trips:total:localities · 300 s"),
    Operation("GET", f"{API}/trips/card/{{card_id}}", card_trips, "A card's 20 latest trips",
              list[models.Trip], errors=NOT_FOUND, cache="trips:card:{id} · 300 s"),
    Operation("GET", f"{API}/trips/{{trip_id}}", get_trip, "One trip",
              models.Trip, errors=NOT_FOUND, cache="trip:{id} · 300 s"),
    Operation("POST", f"{API}/trips", board, "Board: debit the fare (or the transfer fare)",
              models.Boarding, 201, models.BoardRequest, (402, 404, 409), ("validator",)),
    Operation("POST", f"{API}/trips/{{trip_id}}/end", end_trip, "Alight: close an open trip",
              models.Trip, 200, models.EndTripRequest, (404, 409), ("validator",)),
    Operation("GET", f"{API}/finance/revenue", revenue_total, "Revenue: the fares boardings debited",
              models.Revenue, cache="finance:total_revenue · 60 s"),
    Operation("GET", f"{API}/finance/revenue/localities", revenue_by_locality, "Revenue per locality",
              list[models.LocalityRevenue], cache="finance:revenue:by_localities · 60 s"),
    Operation("POST", f"{API}/cards", issue_card, "Issue a card (balance 0, active)",
              models.Card, 201, models.CardRequest, (404, 409), ADMIN),
    Operation("PATCH", f"{API}/cards/{{card_id}}", set_card_status, "Set a card's status (block a lost card)",
              models.Card, 200, models.CardStatusRequest, NOT_FOUND, ADMIN),
    Operation("GET", f"{API}/cards/{{card_id}}/balance", card_balance, "A card's balance and status",
              models.CardBalance, errors=NOT_FOUND, cache="card:{id}:balance · 300 s"),
    Operation("POST", f"{API}/recharges", create_recharge, "Recharge a card (Idempotency-Key replays)",
              models.Recharge, 201, models.RechargeRequest, (404, 409), ("recharge_point",),
              headers=("Idempotency-Key",)),
    Operation("POST", f"{API}/users", create_user, "Register a user",
              models.User, 201, models.UserRequest, (409,), ADMIN),
    Operation("GET", f"{API}/users/count", users_count, "How many users", models.Count),
    Operation("GET", f"{API}/users/active/count", users_active_count,
              "How many users hold an active card", models.Count),
    Operation("GET", f"{API}/users/latest", users_latest, "The 10 latest registrations", list[models.User]),
    Operation("GET", f"{API}/users/{{user_id}}/recharges", user_recharges, "A user's 20 latest recharges",
              list[models.UserRecharge], errors=NOT_FOUND, cache="user:{id}:recharges · 300 s"),
    Operation("GET", f"{API}/routes", routes_all, "Every route", list[models.Route], cache="routes:all · 300 s"),
    Operation("GET", f"{API}/stations", stations_all, "Every station", list[models.Station],
              cache="stations:all · 300 s"),
]
ROUTES: list[BaseRoute] = [
    *(operation.route() for operation in OPERATIONS),
    Route("/metrics", metrics.endpoint, methods=["GET"]),
    *docs.routes(OPERATIONS, "Travel Recharge API", "1.0.0"),
]


# ---------------------------------------------------------------- python server.py
DATA_DIR = Path(os.environ.get("DATA_DIR") or Path(__file__).resolve().parent / ".data")
DEFAULT_DEMO_SCALE = 1


def demo_admin_token(data_dir: Path) -> str:
    """The embedded default's admin token, made once and kept beside its data (mode 0600)."""
    path = data_dir / "admin.token"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        write_secret(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


async def load_demo_data(database_url: str, scale: int) -> None:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await db.apply_schema(conn)
        started = time.monotonic()
        if await db.load_demo_data(conn, scale):
            print(f"loaded demo data at scale {scale} in {time.monotonic() - started:.1f} s", flush=True)
    finally:
        await conn.close()


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    import uvicorn

    settings = Settings.from_env()
    log_config = logs.logging_config(settings.log_level)
    logging.config.dictConfig(log_config)
    stack = None
    metrics_dir = tempfile.TemporaryDirectory(prefix="travel-metrics-")  # the workers' shared metrics
    if not (settings.database_url and settings.redis_url):
        stack = LocalStack(DATA_DIR)
        database_url, redis_url = stack.start()
        # For psql, redis-cli and bench/run.py by hand: `. .data/urls.env`.
        write_secret(DATA_DIR / "urls.env", f"DATABASE_URL='{database_url}'\nREDIS_URL='{redis_url}'\n")
        settings = Settings.from_env(
            database_url=settings.database_url or database_url,
            redis_url=settings.redis_url or redis_url,
            demo_scale=DEFAULT_DEMO_SCALE if settings.demo_scale is None else settings.demo_scale,
            admin_token=settings.admin_token or demo_admin_token(DATA_DIR),
        )
    try:
        if settings.demo_scale:
            asyncio.run(load_demo_data(settings.database_url, settings.demo_scale))
        asyncio.run(prepare_database(settings))
        os.environ.update(DATABASE_URL=settings.database_url, REDIS_URL=settings.redis_url)
        if settings.admin_token:
            os.environ["ADMIN_TOKEN"] = settings.admin_token
        print(f"serving on http://{settings.host}:{settings.port}{API}/health"
              f"  (docs: http://{settings.host}:{settings.port}/docs)", flush=True)
        if stack is not None:
            print(f"demo admin token: {settings.admin_token}", flush=True)
        # uvicorn drains, then re-raises the stop signal; a requested stop is a clean exit.
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, _exit_cleanly)
        if settings.workers > 1:
            metrics.prepare_multiprocess(Path(metrics_dir.name))
        uvicorn.run(
            "server:create_app", factory=True, host=settings.host, port=settings.port,
            workers=settings.workers, loop="uvloop", http="httptools", access_log=False,
            log_level=settings.log_level, log_config=log_config, timeout_graceful_shutdown=10,
        )
    finally:
        if stack is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan the servers
            stack.stop()
        metrics_dir.cleanup()


if __name__ == "__main__":
    main()
