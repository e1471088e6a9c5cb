"""The service's Prometheus metrics: the counters, gauges and histograms every module counts
into, and their scrape. A leaf: it imports nothing of the service's (middleware.py feeds
it per request).

Metrics use the official client (prometheus_client) rather than hand-written exposition.
With several workers (`prepare_multiprocess` before uvicorn starts them) each worker writes
its values to files of a private directory and a scrape of any worker sums them all
(prometheus_client's multiprocess mode), so /metrics shows the service, not one worker.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from travel.database import Database

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
POOL_SAMPLE_SECONDS = 1.0

REQUESTS = Counter("travel_requests_total", "HTTP requests answered", ["route", "method", "status"])
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)  # seconds, upper bounds
LATENCY = Histogram("travel_request_seconds", "Time from request to the end of the answer", ["route"], buckets=BUCKETS)


class Tallied:
    """A counter counted once per request: a plain integer here, added to the Prometheus
    `counter` in bulk by `flush_tallied` (a Prometheus increment takes a lock every time)."""

    __slots__ = ("count", "counter")

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.count = 0

    def inc(self) -> None:
        self.count += 1


CACHE_HITS = Tallied(Counter("travel_cache_hits_total", "Cached reads answered from Redis"))
CACHE_MISSES = Tallied(Counter("travel_cache_misses_total", "Cached reads answered from PostgreSQL"))
_TALLIED = (CACHE_HITS, CACHE_MISSES)


def flush_tallied() -> None:
    """Add what the Tallied counters counted since the last flush."""
    for tallied in _TALLIED:
        if tallied.count:
            tallied.counter.inc(tallied.count)
            tallied.count = 0


CACHE_LOADS = Counter(
    "travel_cache_loads_total", "PostgreSQL loads for cache misses (concurrent misses of one key share one)"
)
CACHE_ERRORS = Counter("travel_cache_invalidation_errors_total", "Invalidations Redis did not take")
OVERLOADED = Counter("travel_overloaded_total", "Requests refused with 503 OVERLOADED")
REDIS_ERRORS = Counter("travel_redis_errors_total", "Redis calls that failed or timed out", ["operation"])
DATABASE_ERRORS = Counter("travel_database_unavailable_total", "Requests answered 503 DATABASE_UNAVAILABLE")
# Summed over live workers when there are several.
POOL_SIZE = Gauge("travel_db_pool_size", "Open PostgreSQL connections", multiprocess_mode="livesum")
POOL_IDLE = Gauge("travel_db_pool_idle", "Idle PostgreSQL connections", multiprocess_mode="livesum")
POOL_IN_FLIGHT = Gauge("travel_db_in_flight", "Requests using or waiting for a connection", multiprocess_mode="livesum")


def prepare_multiprocess(directory: Path) -> None:
    """Before uvicorn starts several workers: make `directory` empty and private and have the
    workers (which inherit the environment) keep their metrics in it. This process's own
    metrics were made before and stay in memory; it serves no requests."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    os.environ[MULTIPROCESS_DIR] = str(directory)


def _scraped_registry() -> CollectorRegistry:
    if MULTIPROCESS_DIR not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


_SCRAPED = _scraped_registry()


def watch_pool(database: Database) -> None:
    """Report the pool's figures: read at scrape time with one worker, sampled every second
    into the shared files with several (a scrape reads only those)."""
    if MULTIPROCESS_DIR not in os.environ:
        POOL_SIZE.set_function(database.pool.get_size)
        POOL_IDLE.set_function(database.pool.get_idle_size)
        POOL_IN_FLIGHT.set_function(lambda: database.in_flight)
        return
    loop = asyncio.get_running_loop()

    def sample() -> None:
        POOL_SIZE.set(database.pool.get_size())
        POOL_IDLE.set(database.pool.get_idle_size())
        POOL_IN_FLIGHT.set(database.in_flight)
        loop.call_later(POOL_SAMPLE_SECONDS, sample)

    sample()


def forget_worker() -> None:
    """At a worker's shutdown: its pool gauges no longer count (its counters still do)."""
    directory = os.environ.get(MULTIPROCESS_DIR)
    if directory:
        multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


def observe_many(histogram: Any, counts: list[int], seconds: float) -> None:
    """Add many observations to a labelled `histogram` at once: `counts` per bucket of
    BUCKETS (then +Inf), `seconds` their sum. prometheus_client has no public call for it,
    so this uses its buckets' values (tests/test_stats.py holds the result to one observe() per answer)."""
    histogram._sum.inc(seconds)
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)


# What is tallied elsewhere and added here in bulk (observer.py): flushed before a scrape.
PENDING: list[Callable[[], None]] = []


def flush_pending() -> None:
    """Add every tally taken since the last flush, before anything reads the figures."""
    for flush in PENDING:
        flush()


async def endpoint(_: Request) -> Response:
    flush_pending()
    return Response(generate_latest(_SCRAPED), media_type=CONTENT_TYPE_LATEST)
