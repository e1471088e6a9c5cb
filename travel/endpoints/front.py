"""The app's front: the one ASGI layer between uvicorn and the router.

Starlette puts two layers of its own there (ServerErrorMiddleware, ExceptionMiddleware) and
the service added a third to observe answers; each wraps every request and every message
sent. `Front` is all three in one: it answers what the router raised with the app's exception
handlers (problem+json, travel/errors.py), counts a client gone mid-request as 499, and records
every answer once (travel/observability/observer.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from travel.observability import logs
from travel.observability.observer import CLIENT_CLOSED_REQUEST, Exchange, Observer

log = logging.getLogger("travel.front")


class Front:
    """Answers errors and observes every answer, for the app below it."""

    def __init__(self, app: ASGIApp, handlers: Mapping[Any, Any], observer: Observer) -> None:
        self.app = app
        self.handlers = dict(handlers)
        self.observer = observer
        assert Exception in self.handlers, "an answer for the unexpected, or a request could go unanswered"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the lifespan
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        exchange = Exchange(send, logs.request_id(scope["headers"]))
        try:
            await self.app(scope, receive, exchange.send)
        except ClientDisconnect:  # mid-body or mid-answer: nobody is left to answer, nothing failed
            exchange.status = CLIENT_CLOSED_REQUEST
        except Exception as error:
            await self.answer(scope, receive, exchange, error)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.observer.answered(route, scope["method"], scope["path"], exchange, time.perf_counter() - started)

    async def answer(self, scope: Scope, receive: Receive, exchange: Exchange, error: Exception) -> None:
        """The problem `error` stands for, unless an answer has begun (then only the
        connection's end can tell the client, and uvicorn closes it)."""
        if exchange.started:
            raise RuntimeError("an error after the answer began") from error
        handler = next(self.handlers[cls] for cls in type(error).__mro__ if cls in self.handlers)
        response = await handler(Request(scope, receive), error)
        error.__traceback__ = None  # a reused exception would carry every request's frames
        try:
            await response(scope, receive, exchange.send)
        except ClientDisconnect:
            exchange.status = CLIENT_CLOSED_REQUEST


class ServiceApp(Starlette):
    """Starlette with `Front` as its whole middleware stack."""

    def __init__(self, *, exception_handlers: Mapping[Any, Any], observer: Observer, **options: Any) -> None:
        super().__init__(exception_handlers=dict(exception_handlers), **options)
        self.observer = observer

    def build_middleware_stack(self) -> ASGIApp:
        return Front(self.router, self.exception_handlers, self.observer)
