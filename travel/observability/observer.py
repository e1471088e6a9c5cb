"""What every answer leaves behind: the Prometheus counters (metrics.py), the last minute's
figures for /stats (stats.py) and the request log (logs.py), recorded in one call per request
by the app's front (travel/endpoints/front.py).

A request is labelled by its route template (`/api/v1/cards/{card_id}/balance`), never its raw
path, so the label set stays bounded. A client that goes away before its answer is sent is
counted and logged as status 499 (nginx's "client closed request"), never as a 500.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import Message, Send

from travel.observability import logs, stats
from travel.observability.metrics import LATENCY, REQUESTS

CLIENT_CLOSED_REQUEST = 499


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


class Observer:
    """Records answers; requests are logged when `access_log` is given."""

    def __init__(self, access_log: logs.AccessLog | None) -> None:
        self.access_log = access_log
        # The labelled children of REQUESTS and LATENCY by (route, method, status): found
        # once, then one dict lookup per request.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def answered(self, route: str, method: str, path: str, exchange: Exchange, elapsed: float) -> None:
        key = (route, method, exchange.status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = REQUESTS.labels(*key), LATENCY.labels(route)
        children[0].inc()
        children[1].observe(elapsed)
        stats.RECENT.observe(route, elapsed, exchange.cache)
        if self.access_log is not None:
            self.access_log.request(exchange.rid, method, path, route, exchange.status, elapsed, exchange.cache)


def observer(access_log: bool = True) -> Observer:
    """The observer; requests are logged when `access_log` (ACCESS_LOG) and LOG_LEVEL allow."""
    return Observer(logs.ACCESS_LOG if logs.access_log_wanted(access_log) else None)
