"""Prometheus metrics: requests and latency per route, cache hits/misses/errors, pool use.

Uses the official client (prometheus_client) rather than hand-written exposition. The
middleware labels a request by its route template (`/api/v1/cards/{card_id}/balance`),
never by its raw path, so the label set stays bounded.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from db import Database

REQUESTS = Counter("travel_requests_total", "HTTP requests answered", ["route", "method", "status"])
LATENCY = Histogram(
    "travel_request_seconds", "Time from request to the end of the answer", ["route"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
CACHE_HITS = Counter("travel_cache_hits_total", "Cached reads answered from Redis")
CACHE_MISSES = Counter("travel_cache_misses_total", "Cached reads answered from PostgreSQL")
CACHE_ERRORS = Counter("travel_cache_invalidation_errors_total", "Invalidations Redis did not take")
OVERLOADED = Counter("travel_overloaded_total", "Requests refused with 503 OVERLOADED")
POOL_SIZE = Gauge("travel_db_pool_size", "Open PostgreSQL connections")
POOL_IDLE = Gauge("travel_db_pool_idle", "Idle PostgreSQL connections")
POOL_IN_FLIGHT = Gauge("travel_db_in_flight", "Requests using or waiting for a connection")


def watch_pool(database: Database) -> None:
    """Read the pool's figures at scrape time."""
    POOL_SIZE.set_function(database.pool.get_size)
    POOL_IDLE.set_function(database.pool.get_idle_size)
    POOL_IN_FLIGHT.set_function(lambda: database.in_flight)


async def endpoint(_: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class _Measure:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            REQUESTS.labels(template, scope["method"], status).inc()
            LATENCY.labels(template).observe(time.perf_counter() - started)


def middleware() -> Middleware:
    return Middleware(_Measure)
