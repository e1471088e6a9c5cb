"""Observability: Prometheus metrics and one structured log line per request.

Metrics use the official client (prometheus_client) rather than hand-written exposition. A
request is labelled by its route template (`/api/v1/cards/{card_id}/balance`), never its raw
path, so the label set stays bounded. The request log line (logger `travel.access`, level
INFO) carries method, path, status, duration, cache HIT/MISS and a request id, and never a
header value or a body, so no token and no personal data reach the logs.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import msgspec

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import stats

if TYPE_CHECKING:
    from db import Database

ACCESS = logging.getLogger("travel.access")
REQUESTS = Counter("travel_requests_total", "HTTP requests answered", ["route", "method", "status"])
LATENCY = Histogram(
    "travel_request_seconds", "Time from request to the end of the answer", ["route"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
CACHE_HITS = Counter("travel_cache_hits_total", "Cached reads answered from Redis")
CACHE_MISSES = Counter("travel_cache_misses_total", "Cached reads answered from PostgreSQL")
CACHE_ERRORS = Counter("travel_cache_invalidation_errors_total", "Invalidations Redis did not take")
OVERLOADED = Counter("travel_overloaded_total", "Requests refused with 503 OVERLOADED")
REDIS_ERRORS = Counter("travel_redis_errors_total", "Redis calls that failed or timed out", ["operation"])
DATABASE_ERRORS = Counter("travel_database_unavailable_total", "Requests answered 503 DATABASE_UNAVAILABLE")
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


# New request ids: this process's random prefix and a counter (a uuid4 per request costs more).
_ID_PREFIX = uuid.uuid4().hex[:12].encode()
_ID_NUMBERS = itertools.count(1)


def request_id(scope: Scope) -> bytes:
    """The caller's X-Request-ID when it is a short plain token, else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if 0 < len(value) <= 64 and value.isascii() and value.replace(b"-", b"").isalnum():
                return value
            break
    return b"%s-%d" % (_ID_PREFIX, next(_ID_NUMBERS))


@functools.cache
def _request_counter(route: str, method: str, status: int) -> Any:
    """The labelled child of REQUESTS, looked up once per (route, method, status)."""
    return REQUESTS.labels(route, method, status)


@functools.cache
def _latency_histogram(route: str) -> Any:
    return LATENCY.labels(route)


class _Observe:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500
        cache = b""
        rid = request_id(scope)

        async def send_and_note(message: Message) -> None:
            nonlocal status, cache
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.setdefault("headers", [])
                cache = next((value for name, value in headers if name == b"x-cache"), b"")
                message["headers"] = [*headers, (b"x-request-id", rid)]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            elapsed = time.perf_counter() - started
            template = getattr(scope.get("route"), "path", "unmatched")
            _request_counter(template, scope["method"], status).inc()
            _latency_histogram(template).observe(elapsed)
            stats.RECENT.observe(template, elapsed, cache)
            if ACCESS.isEnabledFor(logging.INFO):
                ACCESS.info("request", extra={"request": {
                    "id": rid.decode(), "method": scope["method"], "path": scope["path"],
                    "route": template, "status": status, "ms": round(elapsed * 1000, 3),
                    "cache": cache.decode() or None}})


def middleware() -> Middleware:
    return Middleware(_Observe)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, a record's `request`."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
        }
        request = getattr(record, "request", None)
        if request is not None:
            line["request"] = request
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return msgspec.json.encode(line).decode()


def logging_config(level: str) -> dict[str, Any]:
    """dictConfig for JSON lines on stderr at `level` (LOG_LEVEL), ours and uvicorn's alike;
    uvicorn applies it in every worker process too."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JSONFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error")},
    }
