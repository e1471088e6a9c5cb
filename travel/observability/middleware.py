"""The one ASGI middleware of observability: per request, the Prometheus counters
(metrics.py), the last minute's figures for /stats (stats.py) and the request log (logs.py).

A request is labelled by its route template (`/api/v1/cards/{card_id}/balance`), never its raw
path, so the label set stays bounded. A client that goes away before its answer is sent is
counted and logged as status 499 (nginx's "client closed request"), never as a 500.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from travel.observability import logs, stats
from travel.observability.metrics import LATENCY, REQUESTS

CLIENT_CLOSED_REQUEST = 499


# The labelled children of REQUESTS and LATENCY by (route, method, status): found once, then
# one dict lookup per request.
_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _children(key: tuple[str, str, int]) -> tuple[Any, Any]:
    route, method, status = key
    _CHILDREN[key] = REQUESTS.labels(route, method, status), LATENCY.labels(route)
    return _CHILDREN[key]


class _Exchange:
    """One request's answer as it goes out: its status, X-Cache, and the request id added."""

    __slots__ = ("cache", "downstream", "rid", "status")

    def __init__(self, downstream: Send, rid: bytes) -> None:
        self.downstream = downstream
        self.rid = rid
        self.status = 500
        self.cache = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
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


class _Observe:
    def __init__(self, app: ASGIApp, access_log: logs.AccessLog | None) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        exchange = _Exchange(send, logs.request_id(scope["headers"]))
        try:
            await self.app(scope, receive, exchange.send)
        except ClientDisconnect:  # mid-body or mid-answer: nobody is left to answer, nothing failed
            exchange.status = CLIENT_CLOSED_REQUEST
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")
            key = (route, scope["method"], exchange.status)
            requests, latency = _CHILDREN.get(key) or _children(key)
            requests.inc()
            latency.observe(elapsed)
            stats.RECENT.observe(route, elapsed, exchange.cache)
            if self.access_log is not None:
                self.access_log.request(exchange.rid, key[1], scope["path"], route, key[2], elapsed, exchange.cache)


def middleware(access_log: bool = True) -> Middleware:
    """The middleware; requests are logged when `access_log` (ACCESS_LOG) and LOG_LEVEL allow."""
    return Middleware(_Observe, access_log=logs.ACCESS_LOG if logs.access_log_wanted(access_log) else None)
