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
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import Message, Send

from travel.observability import logs, metrics, stats
from travel.observability.metrics import BUCKETS

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
    """The answers of one (route, method, status) since the last flush: how many, their
    seconds, and how many fell in each of LATENCY's buckets (the last: past them all)."""

    __slots__ = ("buckets", "count", "latency", "requests", "seconds")

    def __init__(self, requests: Any, latency: Any) -> None:
        self.requests = requests  # the Prometheus children the flush adds to
        self.latency = latency
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)


class Observer:
    """Records answers. Per request it only adds to plain counters (`answered`); the
    Prometheus metrics receive the sums once a second and before each scrape (`flush`), so
    no lock is taken and no bucket searched twice per request. Requests are logged when
    `access_log` is given."""

    def __init__(self, access_log: logs.AccessLog | None) -> None:
        self.access_log = access_log
        self._tallies: dict[tuple[str, str, int], _Tally] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        metrics.BEFORE_SCRAPE.append(self.flush)

    def answered(self, route: str, method: str, path: str, exchange: Exchange, elapsed: float) -> None:
        status = exchange.status
        tally = self._tallies.get((route, method, status))
        if tally is None:
            tally = self._tallies[route, method, status] = _Tally(
                metrics.REQUESTS.labels(route, method, status), metrics.LATENCY.labels(route)
            )
        tally.count += 1
        tally.seconds += elapsed
        tally.buckets[bisect.bisect_left(BUCKETS, elapsed)] += 1
        if self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
        stats.RECENT.observe(route, elapsed, exchange.cache)
        if self.access_log is not None:
            self.access_log.request(exchange.rid, method, path, route, status, elapsed, exchange.cache)

    def flush(self) -> None:
        """Add what was tallied to the Prometheus metrics (the shared files with several workers)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        metrics.flush_tallied()
        for tally in self._tallies.values():
            if tally.count:
                tally.requests.inc(tally.count)
                metrics.observe_many(tally.latency, tally.buckets, tally.seconds)
                tally.count, tally.seconds = 0, 0.0
                tally.buckets = [0] * len(tally.buckets)


def observer(access_log: bool = True) -> Observer:
    """The observer; requests are logged when `access_log` (ACCESS_LOG) and LOG_LEVEL allow."""
    return Observer(logs.ACCESS_LOG if logs.access_log_wanted(access_log) else None)
