"""Travel Recharge API: Starlette routes over hand-written SQL (asyncpg) and a Redis cache.

The app factory with its lifespan (the pools, the listener, the batchers), and at the bottom
the route table: one declaration per endpoint, from which its route, its wrapper (access, path
id, body, answer) and its OpenAPI entry derive. The handlers are in travel/endpoints/;
`python server.py` serves (start-up, the embedded stack and signals: travel/startup/serve.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route

import cachekeys
from travel import auth, database, groupcommit, models
from travel.auth import TokenCache
from travel.cache import Cache, connect
from travel.database import QUERIES, Database
from travel.endpoints import dashboard, hourly, openapi
from travel.endpoints.declaration import Access, Endpoint
from travel.endpoints.front import ServiceApp
from travel.endpoints.reads import (
    cached_read,
    health,
    instance_stats,
    trips_hourly,
    users_active_count,
    users_count,
    users_latest,
)
from travel.endpoints.routing import ShapeRouter
from travel.endpoints.tokens import create_token, list_tokens, revoke_token
from travel.endpoints.writes import (
    board,
    create_recharge,
    create_user,
    end_trip,
    invalidated,
    issue_card,
    set_card_status,
)
from travel.errors import EXCEPTION_HANDLERS
from travel.observability import logs, metrics
from travel.observability.observer import observer
from travel.retention import prune_idempotency_keys
from travel.settings import Settings

GC_ALLOCATIONS = 50_000  # net allocations between young-generation collections (default 700)
API = "/api/v1"
CACHE_EPOCH = QUERIES["cache-epoch"]


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app. Pools open in the lifespan, never at import; the schema is applied
    before (travel/startup/serve.py), once per start rather than once per worker."""
    settings = settings or Settings.from_env()
    logs.ACCESS_LOG.share_with_workers(settings.workers > 1)
    answers = observer(settings.access_log)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        pools = [
            await database.create_pool(url, min_size=settings.pool_min, max_size=settings.pool_max)
            for url in (settings.database_url, settings.read_database_url)
            if url
        ]
        redis = connect(settings.redis_url, sentinels=settings.redis_sentinels, service=settings.redis_sentinel_service)
        primary = Database(pools[0], settings.max_waiting)
        # Aggregates, counts and reference data may come from a replica; balances, trips,
        # recharges and every write stay on the primary.
        lagging = Database(pools[1], settings.max_waiting) if len(pools) > 1 else primary
        async with pools[0].acquire() as conn:  # a query that no longer fits its Struct fails the start
            await database.check_row_shapes(conn)
            cache = Cache(redis, await CACHE_EPOCH(conn))
        metrics.watch_pool(primary)

        tokens = TokenCache(failures=auth.FailedAuthentications(settings.auth_failures_per_minute))

        def on_epoch(payload: str) -> None:
            cache.epoch = max(cache.epoch, int(payload))

        async def catch_up(conn: asyncpg.Connection) -> None:  # what went unheard while disconnected
            on_epoch(str(await CACHE_EPOCH(conn)))
            await tokens.catch_up(conn)

        listener = database.Listener(
            settings.listen_database_url or settings.database_url,
            {"cache_epoch": on_epoch, auth.REVOCATIONS_CHANNEL: tokens.forget},
            catch_up,
        )
        background = [asyncio.create_task(listener.run()), asyncio.create_task(prune_idempotency_keys(primary))]
        # A request allocates hundreds of short-lived objects, nearly all freed by their
        # reference counts; at the default threshold (700) the cyclic collector ran every few
        # requests and cost ~13 % of cache-hit throughput. Objects made so far live as long as
        # the worker: freeze them out of every collection.
        gc.set_threshold(GC_ALLOCATIONS, *gc.get_threshold()[1:])
        gc.freeze()
        try:
            yield {
                "db": primary,
                "lagging_db": lagging,
                "cache": cache,
                "tokens": tokens,
                "listener": listener,
                **groupcommit.write_batchers(primary, functools.partial(invalidated, cache, primary)),
            }
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            logs.ACCESS_LOG.flush()
            answers.flush()
            metrics.forget_worker()
            # Requests have drained by now; closing must finish even if we are cancelled.
            await asyncio.shield(
                asyncio.gather(*(database.close_pool(pool) for pool in pools), redis.aclose(), return_exceptions=True)
            )

    app = ServiceApp(exception_handlers=EXCEPTION_HANDLERS, observer=answers)
    app.router = ShapeRouter(ROUTES, lifespan)
    return app


# ---------------------------------------------------------------- the route table
ENDPOINTS = [
    Endpoint(
        method="GET",
        path=f"{API}/health",
        handler=health,
        summary="Liveness of the API, PostgreSQL and Redis",
        answer=models.Health,
        errors=(503,),
        unavailable=models.Health,
        notes="200 while PostgreSQL answers: `status` ok, or degraded with `cache` down (reads then come"
        " from PostgreSQL). 503 with `database` down when PostgreSQL cannot be reached.",
    ),
    cached_read(
        path=f"{API}/trips/total",
        summary="Trip totals and revenue",
        key=cachekeys.trips_total,
        query="trips-total",
        answer=models.TripsTotal,
    ),
    cached_read(
        path=f"{API}/trips/total/localities",
        summary="Trips per locality",
        key=cachekeys.trips_by_locality,
        query="trips-by-locality",
        answer=models.LocalityTrips,
        many=True,
    ),
    # Before /trips/{trip_id}, which would take "hourly" for an id.
    Endpoint(
        method="GET",
        path=f"{API}/trips/hourly",
        handler=trips_hourly,
        summary="Trips and revenue per hour (Bogotá), the last N hours",
        answer=list[models.HourTrips],
        cache=cachekeys.trips_hourly,
        query=(
            ("hours", {"type": "integer", "minimum": 1, "maximum": hourly.MAX_HOURS, "default": hourly.DEFAULT_HOURS}),
        ),
    ),
    Endpoint(
        method="GET",
        path=f"{API}/stats",
        handler=instance_stats,
        summary="This instance: request rates, latency, cache, Redis, pool",
        answer=models.Stats,
    ),
    cached_read(
        path=f"{API}/trips/card/{{card_id}}",
        summary="A card's 20 latest trips",
        key=cachekeys.card_trips,
        query="card-trips",
        answer=models.Trip,
        many=True,
        missing="CARD_NOT_FOUND",
    ),
    cached_read(
        path=f"{API}/trips/{{trip_id}}",
        summary="One trip",
        key=cachekeys.trip,
        query="trip",
        answer=models.Trip,
        missing="TRIP_NOT_FOUND",
    ),
    Endpoint(
        method="POST",
        path=f"{API}/trips",
        handler=board,
        summary="Board: debit the fare (or the transfer fare)",
        answer=models.Boarding,
        status=201,
        access=Access.ROLES,
        roles=("validator",),
        body=models.BoardRequest,
        errors=(402, 404, 409),
    ),
    Endpoint(
        method="POST",
        path=f"{API}/trips/{{trip_id}}/end",
        handler=end_trip,
        summary="Alight: close an open trip",
        answer=models.Trip,
        access=Access.ROLES,
        roles=("validator",),
        body=models.EndTripRequest,
        errors=(404, 409),
    ),
    cached_read(
        path=f"{API}/finance/revenue",
        summary="Revenue: the fares boardings debited",
        key=cachekeys.revenue_total,
        query="revenue-total",
        answer=models.Revenue,
    ),
    cached_read(
        path=f"{API}/finance/revenue/localities",
        summary="Revenue per locality",
        key=cachekeys.revenue_by_locality,
        query="revenue-by-locality",
        answer=models.LocalityRevenue,
        many=True,
    ),
    Endpoint(
        method="POST",
        path=f"{API}/cards",
        handler=issue_card,
        summary="Issue a card (balance 0, active)",
        answer=models.Card,
        status=201,
        access=Access.ADMIN,
        body=models.CardRequest,
        errors=(404, 409),
    ),
    Endpoint(
        method="PATCH",
        path=f"{API}/cards/{{card_id}}",
        handler=set_card_status,
        summary="Set a card's status (block a lost card)",
        answer=models.Card,
        access=Access.ADMIN,
        body=models.CardStatusRequest,
        errors=(404,),
    ),
    cached_read(
        path=f"{API}/cards/{{card_id}}/balance",
        summary="A card's balance and status",
        key=cachekeys.card_balance,
        query="card-balance",
        answer=models.CardBalance,
        missing="CARD_NOT_FOUND",
    ),
    Endpoint(
        method="POST",
        path=f"{API}/recharges",
        handler=create_recharge,
        summary="Recharge a card (Idempotency-Key replays)",
        answer=models.Recharge,
        status=201,
        access=Access.ROLES,
        roles=("recharge_point",),
        body=models.RechargeRequest,
        errors=(404, 409),
        headers=("Idempotency-Key",),
    ),
    Endpoint(
        method="POST",
        path=f"{API}/users",
        handler=create_user,
        summary="Register a user",
        answer=models.User,
        status=201,
        access=Access.ADMIN,
        body=models.UserRequest,
        errors=(409,),
    ),
    Endpoint(
        method="GET", path=f"{API}/users/count", handler=users_count, summary="How many users", answer=models.Count
    ),
    Endpoint(
        method="GET",
        path=f"{API}/users/active/count",
        handler=users_active_count,
        summary="How many users hold an active card",
        answer=models.Count,
    ),
    # These two name a person: admin only (a public answer never does).
    Endpoint(
        method="GET",
        path=f"{API}/users/latest",
        handler=users_latest,
        summary="The 10 latest registrations",
        answer=list[models.User],
        access=Access.ADMIN,
    ),
    cached_read(
        path=f"{API}/users/{{user_id}}/recharges",
        summary="A user's 20 latest recharges",
        key=cachekeys.user_recharges,
        query="user-recharges",
        answer=models.UserRecharge,
        many=True,
        missing="USER_NOT_FOUND",
        access=Access.ADMIN,
    ),
    cached_read(
        path=f"{API}/routes",
        summary="Every route",
        key=cachekeys.routes_all,
        query="routes-all",
        answer=models.Route,
        many=True,
    ),
    cached_read(
        path=f"{API}/stations",
        summary="Every station",
        key=cachekeys.stations_all,
        query="stations-all",
        answer=models.Station,
        many=True,
    ),
    Endpoint(
        method="POST",
        path=f"{API}/tokens",
        handler=create_token,
        summary="Make a write token: its secret is shown this once",
        answer=models.NewToken,
        status=201,
        access=Access.ADMIN,
        body=models.TokenRequest,
        errors=(404,),
    ),
    Endpoint(
        method="GET",
        path=f"{API}/tokens",
        handler=list_tokens,
        summary="Every live token (never a secret or hash)",
        answer=list[models.TokenInfo],
        access=Access.ADMIN,
    ),
    Endpoint(
        method="DELETE",
        path=f"{API}/tokens/{{token_id}}",
        handler=revoke_token,
        summary="Revoke a token, on every instance at once (not the last admin token)",
        answer=None,
        status=204,
        access=Access.ADMIN,
        id_maximum=models.INT_MAX,
        errors=(404, 409),
    ),
]
ROUTES: list[BaseRoute] = [
    *(endpoint.route() for endpoint in ENDPOINTS),
    Route("/metrics", metrics.endpoint, methods=["GET"]),
    *dashboard.routes(),
    *openapi.routes(ENDPOINTS, "Travel Recharge API", "1.0.0"),
]


if __name__ == "__main__":
    from travel.startup import serve

    serve.main()
