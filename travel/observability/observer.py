"""What every answer leaves behind: the Prometheus counters (metrics.py), the last minute's
figures for /stats (stats.py) and the request log (logs.py), recorded in one call per request
by the app's front (travel/endpoints/front.py), at the cost of a few additions.

A request is labelled by its route template (`/api/v1/cards/{card_id}/balance`), never its raw
path, so the label set stays bounded. A client that goes away before its answer is sent is
counted and logged as status 499 (nginx's "client closed request"), never as a 500.
"""

from __future__ import annotations

import asyncio
import bisect
import time

from starlette.requests import ClientDisconnect
from starlette.types import Message, Send

from travel.observability import logs, metrics, stats

CLIENT_CLOSED_REQUEST = 499
FLUSH_SECONDS = 1.0  # how stale another worker's figures may be in a scrape


class Exchange:
    """One request's answer as it goes out: its status, X-Cache, and the request id added."""

    __slots__ = ("cache", "downstream", "rid", "started", "status")

    def __init__(self, downstream: Send, rid: bytes) -> None:
        self.downstream = downstream
        self.rid = rid
        self.status = 500
        self.cache = b""
        self.started = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            headers = message["headers"]
            for name, value in headers:
                if name == b"x-cache":
                    self.cache = value
                    break
            # In place: every response object is built for its request (none is sent twice).
            headers.append((b"x-request-id", self.rid))
        try:
            await self.downstream(message)
        except OSError:  # an ASGI 2.4 server's way to say the client has gone
            raise ClientDisconnect() from None


class _Tally:
    """The answers of one (route, method, status, X-Cache) since the last flush: how many,
    their seconds, and how many fell in each latency bin (stats.BOUNDS)."""

    __slots__ = ("bins", "cache", "count", "latency", "requests", "route", "seconds")

    def __init__(self, route: str, method: str, status: int, cache: bytes) -> None:
        self.route = route
        self.cache = cache
        self.requests = metrics.REQUESTS.labels(route, method, status)  # what the flush adds to
        self.latency = metrics.LATENCY.labels(route)
        self.count = 0
        self.seconds = 0.0
        self.bins = [0] * _BINS


_BINS = len(stats.BOUNDS) + 1
# The Prometheus bucket of each latency bin: exact, as every bucket bound is a bin bound.
_BUCKET_OF = [bisect.bisect_left(metrics.BUCKETS, bound) for bound in stats.BOUNDS] + [len(metrics.BUCKETS)]


class Observer:
    """Records answers. Per request it adds to one tally (`answered`): no lock, no second
    bucket search, no per-second ring. Once a second, and before a scrape or /stats reads
    them (`flush`), the tallies go to the Prometheus metrics (the shared files with several
    workers) and to /stats's last minute. Requests are logged when `access_log` is given."""

    def __init__(self, access_log: logs.AccessLog | None) -> None:
        self.access_log = access_log
        self._tallies: dict[tuple[str, str, int, bytes], _Tally] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        metrics.PENDING.append(self.flush)

    def answered(self, route: str, method: str, path: str, exchange: Exchange, elapsed: float) -> None:
        key = (route, method, exchange.status, exchange.cache)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = _Tally(*key)
        tally.count += 1
        tally.seconds += elapsed
        tally.bins[bisect.bisect_left(stats.BOUNDS, elapsed)] += 1
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
        if self.access_log is not None:
            self.access_log.request(exchange.rid, method, path, route, key[2], elapsed, key[3])

    def flush(self) -> None:
        """Hand what was tallied to Prometheus and to /stats."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        metrics.flush_tallied()
        second = int(time.monotonic())
        for tally in self._tallies.values():
            if not tally.count:
                continue
            buckets = [0] * (len(metrics.BUCKETS) + 1)
            for index, count in enumerate(tally.bins):
                if count:
                    buckets[_BUCKET_OF[index]] += count
            tally.requests.inc(tally.count)
            metrics.observe_many(tally.latency, buckets, tally.seconds)
            stats.RECENT.add(tally.route, second, tally.count, tally.bins, tally.cache)
            tally.count, tally.seconds, tally.bins = 0, 0.0, [0] * _BINS


def observer(access_log: bool = True) -> Observer:
    """The observer; requests are logged when `access_log` (ACCESS_LOG) and LOG_LEVEL allow."""
    return Observer(logs.ACCESS_LOG if logs.access_log_wanted(access_log) else None)
