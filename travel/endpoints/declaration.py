"""The route table's entries: one declaration per endpoint, from which its Starlette route, its
OpenAPI operation (openapi.py) and the wrapper that serves it are all derived, so none can drift.

The wrapper does what the declaration states: it checks the caller's token (`access`), parses
the path id, decodes and validates the body (`body`), calls the handler with what it found
(a `Call`), and encodes the handler's answer with the declared `status`. A handler holds only
what is particular to its endpoint: adding one is a declaration and a small function.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from cachekeys import CachedKey
from travel import models
from travel.auth import Caller, authorize
from travel.endpoints.parsing import path_id, read_body
from travel.endpoints.responses import JSONBytes, encode

BodyT = TypeVar("BodyT")
METHODS = ("GET", "POST", "PATCH", "DELETE")
WITH_BODY = ("POST", "PATCH")
_PATH_ID = re.compile(r"\{(\w+)\}")


class Access(enum.Enum):
    """Who may call an endpoint."""

    PUBLIC = "public"  # anyone, no token read
    ROLES = "roles"  # a bearer token of one of the endpoint's `roles`, or of an admin
    ADMIN = "admin"  # an admin token only


class Call(Generic[BodyT]):
    """What the wrapper found in a request for its handler: the caller (None when public),
    the path id (0 when the path has none) and the decoded body (None when it takes none).
    The Starlette `request` is built only for a handler that asks for it: a cached read
    answers from the ASGI scope alone."""

    __slots__ = ("_request", "body", "caller", "path_id", "receive", "scope")

    def __init__(
        self, scope: Scope, receive: Receive, request: Request | None, caller: Caller | None, path_id: int, body: BodyT
    ) -> None:
        self.scope = scope
        self.receive = receive
        self._request = request
        self.caller = caller
        self.path_id = path_id
        self.body = body

    @property
    def request(self) -> Request:
        if self._request is None:
            self._request = Request(self.scope, self.receive)
        return self._request

    @property
    def state(self) -> State:
        """The lifespan's state: pools, cache, batchers."""
        return State(self.scope["state"])


# A Struct (or list of them) to encode with the declared status; a Response, sent as it is
# (cached bytes, extra headers); None for a 204.
Answer = Any
Handler = Callable[[Call[Any]], Awaitable[Answer]]


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """One method on one path: its handler, who may call it, what it takes and answers, and
    what the document says of it. Checked when built: a wrong declaration fails at import."""

    method: str
    path: str
    handler: Handler
    summary: str
    answer: Any  # the answer's type (a Struct, list[Struct]); None for 204
    status: int = 200
    access: Access = Access.PUBLIC
    roles: tuple[str, ...] = ()  # with Access.ROLES: who besides an admin
    body: type[models.Body] | None = None
    id_maximum: int = models.BIGINT_MAX  # the path id's bound (a token id is a PostgreSQL integer)
    errors: tuple[int, ...] = ()  # statuses beyond what access, ids and body imply
    cache: CachedKey | None = None
    headers: tuple[str, ...] = ()  # request headers it reads, for the document
    query: tuple[tuple[str, dict[str, Any]], ...] = ()  # optional query parameters and their schemas
    unavailable: Any = None  # the body of its 503 when that is not a problem (/health)
    notes: str = ""  # what its document says beyond the summary

    def __post_init__(self) -> None:
        where = f"{self.method} {self.path}"
        assert self.method in METHODS, f"{where}: method not one of {METHODS}"
        assert self.path.startswith("/") and self.summary, f"{where}: a path from the root and a summary"
        assert (self.access is Access.ROLES) == bool(self.roles), f"{where}: roles go with Access.ROLES, and only"
        assert "admin" not in self.roles, f"{where}: an admin may always call; name the other roles"
        assert (self.body is not None) <= (self.method in WITH_BODY), f"{where}: a {self.method} takes no body"
        assert len(self.path_ids()) <= 1, f"{where}: the wrapper parses one path id at most"
        assert (self.status == 204) == (self.answer is None), f"{where}: no answer type exactly when 204"
        assert self.status in (200, 201, 204), f"{where}: status {self.status}"

    @property
    def guarded(self) -> bool:
        return self.access is not Access.PUBLIC

    def path_ids(self) -> list[str]:
        return _PATH_ID.findall(self.path)

    def route(self) -> Route:
        # An ASGI callable, not a function: Starlette then adds no request/response wrapper
        # of its own (the wrapper below is the only one).
        return Route(self.path, Served(self), methods=[self.method], name=self.handler.__name__)


class Served:
    """An endpoint as the ASGI app its route calls: access, path id, body, then the handler,
    and its answer encoded with the declared status. Errors propagate to the app's front
    (travel/endpoints/front.py), which answers them as problems."""

    __slots__ = ("body_type", "guarded", "handler", "id_name", "maximum", "roles", "status")

    def __init__(self, endpoint: Endpoint) -> None:
        self.handler = endpoint.handler
        self.status = endpoint.status
        self.body_type = endpoint.body
        self.maximum = endpoint.id_maximum
        self.roles = endpoint.roles
        self.guarded = endpoint.guarded
        self.id_name = next(iter(endpoint.path_ids()), "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive) if self.guarded or self.body_type is not None else None
        # In the order a client would fix them: who, which, what.
        caller = await authorize(request, *self.roles) if request is not None and self.guarded else None
        item_id = path_id(scope["path_params"], self.id_name, self.maximum) if self.id_name else 0
        body = await read_body(request, self.body_type) if request is not None and self.body_type else None
        answer = await self.handler(Call(scope, receive, request, caller, item_id, body))
        if not isinstance(answer, Response):
            answer = Response(status_code=self.status) if answer is None else JSONBytes(encode(answer), self.status)
        await answer(scope, receive, send)
