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

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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
    the path id (0 when the path has none) and the decoded body (None when it takes none)."""

    __slots__ = ("body", "caller", "path_id", "request")

    def __init__(self, request: Request, caller: Caller | None, path_id: int, body: BodyT) -> None:
        self.request = request
        self.caller = caller
        self.path_id = path_id
        self.body = body

    @property
    def state(self) -> Any:
        """The lifespan's state: pools, cache, batchers."""
        return self.request.state


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
        return Route(self.path, self.serve(), methods=[self.method], name=self.handler.__name__)

    def serve(self) -> Callable[[Request], Awaitable[Response]]:
        """The request handler Starlette calls: access, path id, body, then the handler."""
        handler, status, body_type, maximum = self.handler, self.status, self.body, self.id_maximum
        roles = self.roles
        guarded = self.guarded
        id_name = next(iter(self.path_ids()), "")

        async def serve(request: Request) -> Response:
            # In the order a client would fix them: who, which, what.
            caller = await authorize(request, *roles) if guarded else None
            item_id = path_id(request, id_name, maximum) if id_name else 0
            body = await read_body(request, body_type) if body_type is not None else None
            answer = await handler(Call(request, caller, item_id, body))
            if isinstance(answer, Response):
                return answer
            if answer is None:
                return Response(status_code=status)
            return JSONBytes(encode(answer), status)

        serve.__name__ = handler.__name__
        return serve
