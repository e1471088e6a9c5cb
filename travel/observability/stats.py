"""What GET /stats says about this instance (this process): uptime, requests/s and p50/p99
latency per route over the last minute, cache hits and misses, Redis's own figures with its
keys per family, and the database pool. Public: route templates and key families only, never
a path, a key or anything about a person.

The observer (observer.py) tallies each answer's latency bin (`BOUNDS`: 20 log-scale bins per
decade, and Prometheus's bucket bounds too, so that its buckets are exact sums of bins) and
hands the tallies to `RECENT.add` once a second and before /stats reads them. Each route keeps
a ring of per-second slots, each a sparse histogram, so a minute of any traffic costs at most
60 small dicts per route, and a percentile is the middle of its bin: within 6 % of the exact
value.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from typing import TYPE_CHECKING, Literal, cast

from redis.exceptions import RedisError

import cachekeys
from travel import models
from travel.observability import metrics

if TYPE_CHECKING:
    from travel.cache import Cache
    from travel.database import Database

WINDOW_SECONDS = 60
BINS_PER_DECADE = 20
_LOWEST_LOG10 = -6  # answers faster than 1 µs share bin 0
# Keys per family: SCAN at most this many names, at most this often (Redis is shared).
SCAN_EVERY_SECONDS = 5.0
SCAN_BATCH = 1000
SCAN_MAX_NAMES = 50_000


# The bins' upper bounds: bin i holds latencies up to _BIN_BOUNDS[i] seconds (bisect finds it).
# Upper bounds (seconds) of the latency bins: bin i holds latencies up to BOUNDS[i], the
# last bin (len(BOUNDS)) everything slower. Prometheus's bounds are among them.
BOUNDS = tuple(
    sorted(
        {10 ** ((index + 1) / BINS_PER_DECADE + _LOWEST_LOG10) for index in range(10 * BINS_PER_DECADE)}
        | set(metrics.BUCKETS)
    )
)


def _bin_middle_ms(index: int) -> float:
    """The geometric middle of bin `index`, in milliseconds."""
    low = BOUNDS[index - 1] if index > 0 else BOUNDS[0] / 10 ** (1 / BINS_PER_DECADE)
    high = BOUNDS[index] if index < len(BOUNDS) else BOUNDS[-1] * 10 ** (1 / BINS_PER_DECADE)
    return 1000 * math.sqrt(low * high)


class _Second:
    """What one second of one route saw: answers, and their latencies by bin."""

    __slots__ = ("answers", "bins", "second")

    def __init__(self) -> None:
        self.second = -1
        self.answers = 0
        self.bins: dict[int, int] = {}


class _Ring:
    """WINDOW_SECONDS slots, one per second, reused in turn."""

    __slots__ = ("slots",)

    def __init__(self) -> None:
        self.slots = [_Second() for _ in range(WINDOW_SECONDS)]

    def at(self, second: int) -> _Second:
        slot = self.slots[second % WINDOW_SECONDS]
        if slot.second != second:
            slot.second, slot.answers, slot.bins = second, 0, {}
        return slot

    def recent(self, now: int) -> list[_Second]:
        return [slot for slot in self.slots if now - WINDOW_SECONDS < slot.second <= now]


def _percentile_ms(bins: Counter[int], total: int, fraction: float) -> float:
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for index in sorted(bins):
        seen += bins[index]
        if seen >= rank:
            return round(_bin_middle_ms(index), 3)
    return 0.0


class Recent:
    """The last minute of answers per route, and cache hits and misses (since start and recent)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.routes: dict[str, _Ring] = {}
        self.hits = 0
        self.misses = 0
        self._cache = _Ring()  # answers = hits, bins[0] = misses

    def add(self, route: str, second: int, answers: int, bins: list[int], cache: bytes) -> None:
        """Count `answers` of `route` in `second` (monotonic), `bins[i]` of them in latency bin
        i; `cache` is their X-Cache (b"" if none)."""
        ring = self.routes.get(route)
        if ring is None:
            ring = self.routes[route] = _Ring()
        slot = ring.at(second)
        slot.answers += answers
        for index, count in enumerate(bins):
            if count:
                slot.bins[index] = slot.bins.get(index, 0) + count
        if cache == b"HIT":
            self.hits += answers
            self._cache.at(second).answers += answers
        elif cache == b"MISS":
            self.misses += answers
            misses = self._cache.at(second).bins
            misses[0] = misses.get(0, 0) + answers

    def window(self) -> float:
        """Seconds the figures cover: the last minute, or less just after start."""
        return max(1.0, min(float(WINDOW_SECONDS), time.monotonic() - self.started))

    def route_stats(self) -> list[models.RouteStats]:
        """Per route answered in the last minute, busiest first."""
        now = int(time.monotonic())
        window = self.window()
        answers: list[models.RouteStats] = []
        for route, ring in self.routes.items():
            slots = ring.recent(now)
            total = sum(slot.answers for slot in slots)
            if not total:
                continue
            bins: Counter[int] = Counter()
            for slot in slots:
                bins.update(slot.bins)
            answers.append(
                models.RouteStats(
                    route,
                    total,
                    round(total / window, 3),
                    _percentile_ms(bins, total, 0.5),
                    _percentile_ms(bins, total, 0.99),
                )
            )
        answers.sort(key=lambda stats: (-stats.requests, stats.route))
        return answers

    def cache_stats(self, status: Literal["ok", "down"]) -> models.CacheStats:
        slots = self._cache.recent(int(time.monotonic()))
        hits = sum(slot.answers for slot in slots)
        misses = sum(slot.bins.get(0, 0) for slot in slots)
        return models.CacheStats(
            status,
            self.hits,
            self.misses,
            _ratio(self.hits, self.misses),
            hits,
            misses,
            _ratio(hits, misses),
        )


def _ratio(hits: int, misses: int) -> float | None:
    return round(hits / (hits + misses), 4) if hits + misses else None


class KeyFamilies:
    """Keys per family (cachekeys.family), counted by SCAN in batches, never KEYS: at most
    SCAN_MAX_NAMES names (beyond, the counts are scaled up to DBSIZE from that sample), at
    most once per SCAN_EVERY_SECONDS; between two counts, the last one is answered."""

    def __init__(self) -> None:
        self.counted_at = -math.inf
        self.counts: dict[str, int] = {}
        self.counted = 0
        self._counting = False

    async def count(self, cache: Cache, keys: int) -> None:
        """Count again if the last count is old and none is under way (then return at once)."""
        if self._counting or time.monotonic() - self.counted_at < SCAN_EVERY_SECONDS:
            return
        self._counting = True
        try:
            counts: Counter[str] = Counter()
            cursor, counted = 0, 0
            while True:
                cursor, found = await cache.client.scan(cursor, count=SCAN_BATCH)
                names = cast("list[bytes]", found)  # the client never decodes
                counts.update(cachekeys.family(name) for name in names)
                counted += len(names)
                if cursor == 0 or counted >= SCAN_MAX_NAMES:
                    break
            scale = keys / counted if cursor != 0 and counted else 1.0
            self.counts = {family: round(count * scale) for family, count in sorted(counts.items())}
            self.counted = counted
            self.counted_at = time.monotonic()
        finally:
            self._counting = False


RECENT = Recent()
KEY_FAMILIES = KeyFamilies()
REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)


async def redis_stats(cache: Cache) -> models.RedisStats | None:
    """Redis INFO figures and keys per family; None when Redis does not answer."""
    try:
        async with cache.client.pipeline(transaction=False) as pipe:
            pipe.info("memory")
            pipe.info("stats")
            pipe.info("clients")
            pipe.dbsize()
            memory, counters, clients, keys = await pipe.execute()
        await KEY_FAMILIES.count(cache, keys)
    except REDIS_FAILURES:
        return None
    return models.RedisStats(
        memory["used_memory"],
        counters["keyspace_hits"],
        counters["keyspace_misses"],
        counters["evicted_keys"],
        clients["connected_clients"],
        keys,
        KEY_FAMILIES.counts,
        KEY_FAMILIES.counted,
    )


async def collect(database: Database, cache: Cache) -> models.Stats:
    """Everything /stats answers, for this process."""
    metrics.flush_pending()  # the answers tallied since the last flush
    redis = await redis_stats(cache)
    pool = database.pool
    size, idle = pool.get_size(), pool.get_idle_size()
    return models.Stats(
        uptime_seconds=round(time.monotonic() - RECENT.started, 3),
        window_seconds=WINDOW_SECONDS,
        routes=RECENT.route_stats(),
        cache=RECENT.cache_stats("ok" if redis is not None else "down"),
        redis=redis,
        pool=models.PoolStats(size, idle, pool.get_max_size(), max(0, database.in_flight - (size - idle))),
    )
