"""The route table's entries: one declaration per endpoint, from which both its Starlette
route and its OpenAPI operation are derived (see openapi.py), so neither can drift."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cachekeys import CachedKey

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Endpoint:
    """One method on one path: its handler, and what the document says of it."""

    method: str
    path: str
    handler: Handler
    summary: str
    answer: Any = None
    status: int = 200
    body: type | None = None
    errors: tuple[int, ...] = ()
    roles: tuple[str, ...] | None = None  # None: public; (): admin only
    cache: CachedKey | None = None
    headers: tuple[str, ...] = ()
    query: tuple[tuple[str, dict[str, Any]], ...] = ()  # optional query parameters and their schemas
    unavailable: Any = None  # the body of its 503 when that is not a problem (/health)

    def route(self) -> Route:
        return Route(self.path, self.handler, methods=[self.method])

    def path_ids(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]
