"""RFC 9457 problem details: the one shape of every error the API answers.

A `Problem` carries an HTTP status and a stable `code`. PostgreSQL refusals arrive as
asyncpg errors and are mapped by SQLSTATE (our own "TR..." codes from sql/functions.sql,
and the standard ones), never by parsing messages.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from travel.database import Overloaded
from travel.observability import metrics

log = logging.getLogger("travel.errors")

PROBLEM_JSON = "application/problem+json"

# SQLSTATE -> (HTTP status, code); the SQL side lists the same codes in functions.sql.
SQLSTATE_PROBLEMS: dict[str, tuple[int, str]] = {
    "TRN01": (404, "CARD_NOT_FOUND"),
    "TRN02": (404, "TRIP_NOT_FOUND"),
    "TRN03": (404, "USER_NOT_FOUND"),
    "TRN04": (404, "ROUTE_NOT_FOUND"),
    "TRN05": (404, "STATION_NOT_FOUND"),
    "TRN06": (404, "RECHARGE_POINT_NOT_FOUND"),
    "TRN07": (404, "TOKEN_NOT_FOUND"),
    "TRC01": (409, "CARD_NOT_ACTIVE"),
    "TRC02": (409, "TRIP_ALREADY_ENDED"),
    "TRC03": (409, "ROUTE_NOT_ACTIVE"),
    "TRC04": (409, "BALANCE_LIMIT"),
    "TRC05": (409, "LAST_ADMIN_TOKEN"),
    "TRP01": (402, "INSUFFICIENT_BALANCE"),
    "TRI01": (422, "IDEMPOTENCY_KEY_REUSED"),
    "TRF01": (503, "FARE_NOT_CONFIGURED"),
    "23505": (409, "ALREADY_EXISTS"),  # unique_violation
    "23514": (422, "VALIDATION_ERROR"),  # check_violation: input the API's own checks let by
}

# Any other SQLSTATE, by its class (the first two characters), so that no refusal of PostgreSQL
# is ever an unexplained 500: (status, code, detail). Classes not listed (42 syntax or access
# rule, P0 an unmapped RAISE, ...) are a fault of our own SQL: 500, logged with the SQLSTATE.
SQLSTATE_CLASS_PROBLEMS: dict[str, tuple[int, str, str]] = {
    "22": (422, "VALIDATION_ERROR", "a value is out of range or malformed"),  # data exception
    "23": (409, "CONFLICT", "the write conflicts with the data it refers to"),  # integrity
    "40": (503, "TRANSACTION_CONFLICT", "a concurrent write got in the way; retry"),  # 40001, 40P01
    "55": (503, "TRANSACTION_CONFLICT", "a lock or object is busy; retry"),  # 55P03 lock_not_available
    "54": (422, "VALIDATION_ERROR", "a value is too large to process"),  # program limit exceeded
    "08": (503, "DATABASE_UNAVAILABLE", "the database cannot be reached; retry shortly"),
    "25": (503, "DATABASE_UNAVAILABLE", "the database is read-only or busy; retry shortly"),  # a replica
    "53": (503, "DATABASE_UNAVAILABLE", "the database is out of resources; retry shortly"),
    "57": (503, "DATABASE_UNAVAILABLE", "the database is shutting down or cancelled the request; retry"),
    "58": (503, "DATABASE_UNAVAILABLE", "the database had a system error; retry shortly"),
    "XX": (503, "DATABASE_UNAVAILABLE", "the database had an internal error; retry shortly"),
}
RETRY_AFTER_SECONDS = {"TRANSACTION_CONFLICT": "1", "DATABASE_UNAVAILABLE": "2"}

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

# The connection to PostgreSQL failed or timed out (as opposed to PostgreSQL refusing).
DATABASE_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout / command_timeout
    # A pipelined batch whose server went away mid-way (a failover) can leave asyncpg's protocol
    # in a state it reports as InternalClientError; a multi-host URL with no writable host is
    # TargetServerAttributeNotMatched (a subclass). Both mean "no primary now": retry.
    asyncpg.exceptions.InternalClientError,
)
# Anything PostgreSQL can do to a statement: refuse it, or not be there.
DATABASE_ERRORS: tuple[type[Exception], ...] = (asyncpg.PostgresError, *DATABASE_UNAVAILABLE_ERRORS)
# What a statement outside a request's own answer may meet: logged, never answered.
STATEMENT_ERRORS: tuple[type[Exception], ...] = (Overloaded, *DATABASE_ERRORS)


class ProblemBody(msgspec.Struct):
    """An error answer (RFC 9457): `code` is stable, `detail` is for people; some problems
    add members (`field`, `balance` and `fare`, the id that was not found ...)."""

    type: str
    title: str
    status: int
    code: str
    detail: str


class Problem(Exception):
    """Raise to answer with a problem; `extra` members go into the body beside `code`."""

    def __init__(
        self, status: int, code: str, detail: str = "", /, *, headers: dict[str, str] | None = None, **extra: object
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> Response:
        body: dict[str, object] = {
            "type": "about:blank" if not self.code else f"/problems/{self.code.lower().replace('_', '-')}",
            "title": TITLES.get(self.status, "Error"),
            "status": self.status,
            "code": self.code,
        }
        if self.detail:
            body["detail"] = self.detail
        body.update((name, value) for name, value in self.extra.items() if name not in body)
        return Response(msgspec.json.encode(body), self.status, self.headers, media_type=PROBLEM_JSON)


def from_postgres(error: asyncpg.PostgresError) -> Problem | None:
    """The problem a PostgreSQL refusal stands for, or None if it is a fault of our own SQL."""
    mapped = SQLSTATE_PROBLEMS.get(error.sqlstate or "")
    if mapped is None:
        by_class = SQLSTATE_CLASS_PROBLEMS.get((error.sqlstate or "")[:2])
        if by_class is None:
            return None
        status, code, text = by_class
        retry = RETRY_AFTER_SECONDS.get(code)
        return Problem(status, code, text, headers={"Retry-After": retry} if retry else None, sqlstate=error.sqlstate)
    detail = getattr(error, "detail", None)
    if error.sqlstate.startswith("TR"):
        return refusal(error.sqlstate, error.args[0], detail)
    status, code = mapped
    extra: dict[str, Any] = {}
    if error.sqlstate in ("23505", "23514"):
        extra = {"constraint": getattr(error, "constraint_name", None) or ""}
        detail = "a unique field is already taken" if error.sqlstate == "23505" else "a value is out of range"
    return Problem(status, code, detail or "", **extra)


def refusal(sqlstate: str, message: str, detail: str | None) -> Problem:
    """The problem of a domain refusal ("TR..." SQLSTATE), raised or returned by a batch
    function (sql/functions.sql): its message, and its DETAIL JSON as members of the body."""
    status, code = SQLSTATE_PROBLEMS[sqlstate]
    members: dict[str, Any] = msgspec.json.decode(detail) if detail else {}
    return Problem(status, code, message, **members)


def database_unavailable() -> Problem:
    return Problem(
        503, "DATABASE_UNAVAILABLE", "the database cannot be reached; retry shortly", headers={"Retry-After": "2"}
    )


async def handle_problem(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return exc.response()


async def handle_postgres(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, asyncpg.PostgresError)
    problem = from_postgres(exc)
    if problem is None:
        log.error("unmapped PostgreSQL error %s: %s", exc.sqlstate, exc.__class__.__name__)
        problem = Problem(500, "INTERNAL_ERROR", "the request could not be completed")
    elif exc.sqlstate not in SQLSTATE_PROBLEMS:  # mapped by class only: unusual, worth a line
        log.warning("PostgreSQL error %s answered as %d %s", exc.sqlstate, problem.status, problem.code)
        if problem.code == "DATABASE_UNAVAILABLE":
            metrics.DATABASE_ERRORS.inc()
    return problem.response()


async def handle_unavailable(_: Request, exc: Exception) -> Response:
    metrics.DATABASE_ERRORS.inc()
    log.warning("database unavailable: %s", exc.__class__.__name__)
    return database_unavailable().response()


async def handle_unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unexpected error")
    return Problem(500, "INTERNAL_ERROR", "the request could not be completed").response()


async def handle_http(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
    headers = dict(exc.headers or {})
    if "Allow" in headers:  # Starlette joins a set: the same answer in the same order every time
        headers["Allow"] = ", ".join(sorted(method.strip() for method in headers["Allow"].split(",")))
    return Problem(exc.status_code, code, str(exc.detail), headers=headers).response()


async def handle_overloaded(_: Request, exc: Exception) -> Response:
    metrics.OVERLOADED.inc()
    return Problem(
        503, "OVERLOADED", "too many requests wait for the database; retry shortly", headers={"Retry-After": "1"}
    ).response()


# Starlette's exception handlers, most particular first.
EXCEPTION_HANDLERS = {
    Problem: handle_problem,
    HTTPException: handle_http,
    Overloaded: handle_overloaded,
    asyncpg.PostgresError: handle_postgres,
    **{error: handle_unavailable for error in DATABASE_UNAVAILABLE_ERRORS},
    Exception: handle_unexpected,
}
