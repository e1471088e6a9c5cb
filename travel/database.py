"""PostgreSQL: the named queries of `sql/queries/`, the schema applied at start, the pool.

Every statement lives in a `.sql` file under a `-- name: card-balance^` header whose suffix
says what it returns: `^` one row and `$` one value (aiosql's suffixes), `*` many rows (aiosql
leaves that name bare; we spell it, so that every query says what it returns).
Python resolves each query by name once, at import, and never spells SQL. asyncpg prepares each
statement once per connection and keeps it in its statement cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from travel import PROJECT_ROOT

log = logging.getLogger("travel.db")

SQL_DIR = PROJECT_ROOT / "sql"
# Files applied at every start, in order; each is idempotent.
SCHEMA_FILES = ("schema.sql", "functions.sql", "reference.sql", "demo_data.sql")
_HEADER = re.compile(r"^--\s*name:\s*([a-z0-9-]+)([\^$*])\s*$", re.MULTILINE)
# Any constant serialises concurrent starts (several workers, several hosts) on the schema.
_SCHEMA_LOCK = 0x7472_6176_656C

Executor = asyncpg.Pool | asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


@dataclass(frozen=True, slots=True)
class Query:
    """One named statement and how to run it."""

    name: str
    sql: str
    returns: str  # one of ^ $ *

    async def __call__(self, db: Executor, *args: Any) -> Any:
        if self.returns == "^":
            return await db.fetchrow(self.sql, *args)
        if self.returns == "$":
            return await db.fetchval(self.sql, *args)
        return await db.fetch(self.sql, *args)


def load_queries(directory: Path = SQL_DIR / "queries") -> dict[str, Query]:
    """Every `*.sql` file of `directory`, one named query each, by name."""
    queries: dict[str, Query] = {}
    for path in sorted(directory.glob("*.sql")):
        text = path.read_text()
        header = _HEADER.search(text)
        if header is None:
            raise ValueError(f"{path}: no '-- name: <name><suffix>' header")
        name, returns = header.groups()
        if name in queries:
            raise ValueError(f"{path}: query {name!r} is defined twice")
        queries[name] = Query(name, text[header.end() :].strip().rstrip(";"), returns)
    return queries


QUERIES = load_queries()
# The queries whose rows become Structs positionally (`Card(*row)`, no dict in between), with the
# Struct and the columns before its fields: `check_row_shapes` holds each to its Struct at start.
ROW_SHAPES: dict[str, tuple[type[msgspec.Struct], tuple[str, ...]]] = {}


def rows_as(name: str, struct: type[msgspec.Struct], *, leading: tuple[str, ...] = ()) -> Query:
    """The named query, whose rows are read into `struct` positionally after the `leading`
    columns; recorded so that start-up checks its columns (`check_row_shapes`)."""
    ROW_SHAPES[name] = (struct, leading)
    return QUERIES[name]


def row_shape_mismatch(columns: Sequence[str], struct: type[msgspec.Struct], leading: Sequence[str]) -> str | None:
    """Why rows of `columns` do not fit `struct` after `leading`, or None when they do: the
    leading columns, then the Struct's fields in order; trailing fields left out must have
    defaults, and columns past the fields are read by name (a batch's user_id, replayed)."""
    fields = struct.__struct_fields__
    selected = tuple(columns[len(leading) : len(leading) + len(fields)])
    defaulted = len(struct.__struct_defaults__)
    if tuple(columns[: len(leading)]) != tuple(leading) or selected != fields[: len(selected)]:
        return f"columns {tuple(columns)} are not {(*leading, *fields)} in that order"
    if len(fields) - len(selected) > defaulted:
        return f"fields {fields[len(selected) :]} have no column and no default"
    return None


async def check_row_shapes(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
    """Raise unless every query of ROW_SHAPES still selects what its Struct reads."""
    for name, (struct, leading) in ROW_SHAPES.items():
        statement = await conn.prepare(QUERIES[name].sql)
        mismatch = row_shape_mismatch([column.name for column in statement.get_attributes()], struct, leading)
        if mismatch:
            raise RuntimeError(f"query {name!r} no longer fits {struct.__name__}: {mismatch}")


def schema_digest() -> str:
    """sha256 of the schema files: a database at this digest needs nothing applied."""
    digest = hashlib.sha256()
    for name in SCHEMA_FILES:
        digest.update((SQL_DIR / name).read_bytes())
    return digest.hexdigest()


async def apply_schema(conn: asyncpg.Connection) -> bool:
    """Create or upgrade the schema and functions; return False when already current.

    The digest check keeps a restart from taking table locks on a live database when
    nothing changed; the advisory lock makes concurrent starts apply it once.
    """
    digest = schema_digest()
    # Checked first without taking locks or creating anything, so that the least-privilege
    # runtime role (no CREATE on the schema) starts on a database its owner migrated.
    if (
        await conn.fetchval("SELECT to_regclass('schema_state') IS NOT NULL")
        and await conn.fetchval("SELECT digest FROM schema_state") == digest
    ):
        return False
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_state (singleton boolean PRIMARY KEY DEFAULT true"
            " CHECK (singleton), digest text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        if await conn.fetchval("SELECT digest FROM schema_state") == digest:
            return False
        for name in SCHEMA_FILES:
            await conn.execute((SQL_DIR / name).read_text())
        await conn.execute(
            "INSERT INTO schema_state (digest) VALUES ($1)"
            " ON CONFLICT (singleton) DO UPDATE SET digest = excluded.digest, applied_at = now()",
            digest,
        )
        return True


async def load_demo_data(conn: asyncpg.Connection, scale: int) -> bool:
    """Load demo data at `scale` (sql/demo_data.sql) into an empty database; return whether
    it loaded. A database holding any user (cards need users) is left as it is.

    One transaction, under the schema lock so that concurrent starts load it once. Scale 100
    runs for minutes: `conn` must not carry a short command_timeout.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
        if await conn.fetchval("SELECT EXISTS (SELECT FROM users)"):
            return False
        await conn.execute("SELECT load_demo_data($1)", scale)
        return True


async def _keep_session(_: asyncpg.Connection) -> None:
    """Released connections skip asyncpg's reset query (RESET ALL, UNLISTEN *, ...): a
    round trip per request for session state that our statements never change. (asyncpg
    still rolls back a transaction left open.)"""


# Every wait on PostgreSQL is bounded: a statement, a connect, a wait for a pooled connection.
COMMAND_TIMEOUT = 2.0
ACQUIRE_TIMEOUT = 2.0
CLOSE_TIMEOUT = 5.0


async def create_pool(
    dsn: str, *, min_size: int, max_size: int, command_timeout: float = COMMAND_TIMEOUT
) -> asyncpg.Pool:
    """The API's pool: bounded statement and connect time (a dead socket must not hang a
    request for minutes), connections recycled after idling (they may point at a
    failed-over server), JIT off (it only slows statements this short)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        timeout=1.0,  # connect timeout
        max_inactive_connection_lifetime=60.0,
        server_settings={"jit": "off", "application_name": "travel-recharge-api"},
        reset=_keep_session,
    )
    assert pool is not None
    return pool


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close gracefully within CLOSE_TIMEOUT, then terminate what is left (asyncpg's
    `close()` waits for every connection to be released, however long that takes)."""
    try:
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
    except TimeoutError:
        log.warning("pool did not close within %.0f s: terminated", CLOSE_TIMEOUT)
        pool.terminate()


class Database:
    """The pool behind a bound on waiting: past `max_waiting` requests queued for a
    connection, a request is refused at once (503 OVERLOADED) instead of joining a queue
    that grows without end."""

    def __init__(self, pool: asyncpg.Pool, max_waiting: int) -> None:
        self.pool = pool
        self.max_in_flight = pool.get_max_size() + max_waiting
        self.in_flight = 0
        # Reads not yet sent, by (query, arguments): what arrives in the same tick joins them.
        self._gathering: dict[tuple[Any, ...], list[asyncio.Future[Any]]] = {}

    def read(self, query: Query, *args: Any) -> asyncio.Future[Any]:
        """The answer of a read-only `query`, shared with the identical reads that arrive in
        the same event-loop tick: one connection and one round trip for all of them. Each
        still sees PostgreSQL as it was after it arrived, since the statement is sent only
        once the tick is over (it is never one already running). Each caller waits on a
        future of its own: one that goes away cancels only its wait."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        key = (query, *args)
        waiting = self._gathering.get(key)
        if waiting is None:
            self._gathering[key] = [future]
            asyncio.get_running_loop().call_soon(self._send_read, key)
        else:
            waiting.append(future)
        return future

    def _send_read(self, key: tuple[Any, ...]) -> None:
        waiting = self._gathering.pop(key)
        task = asyncio.ensure_future(self.run(*key))
        task.add_done_callback(functools.partial(_answer_each, waiting))

    async def run(self, query: Query, *args: Any) -> Any:
        """Run a named query on a pooled connection; raise Overloaded past the bound."""
        if self.in_flight >= self.max_in_flight:
            raise Overloaded(self.in_flight)
        self.in_flight += 1
        try:
            try:
                # A wait for a connection is bounded, but bounding it costs a task per call
                # (asyncio.wait_for): when one is idle there is no wait to bound.
                idle = self.pool.get_idle_size()
                conn = await (self.pool.acquire() if idle else self.pool.acquire(timeout=ACQUIRE_TIMEOUT))
            except TimeoutError:
                # Every connection busy all along: overload. Otherwise connecting timed out.
                if self.pool.get_size() >= self.pool.get_max_size():
                    raise Overloaded(self.in_flight) from None
                raise
            try:
                try:
                    return await query(conn, *args)
                except TimeoutError:
                    # The server stopped answering: drop the connection now, or releasing
                    # it would wait out another command_timeout trying to reset it.
                    conn.terminate()
                    raise
            finally:
                await self.pool.release(conn)
        finally:
            self.in_flight -= 1


def _answer_each(waiting: list[asyncio.Future[Any]], task: asyncio.Future[Any]) -> None:
    """Hand a shared read's answer (or its error) to each reader still waiting."""
    for future in waiting:
        if future.done():
            continue
        if task.cancelled():
            future.cancel()
        elif (error := task.exception()) is not None:
            future.set_exception(error)
        else:
            future.set_result(task.result())


class Overloaded(Exception):
    """More requests wait for a database connection than the bound allows."""


class Listener:
    """One connection LISTENing on each channel of `on_notify`, kept open for the life of the app.

    `on_connect(conn)` runs on every (re)connection, to read what notifications sent while
    the connection was down would have said; `on_notify[channel](payload)` runs on each
    notification of that channel.
    """

    RETRY_SECONDS = 1.0
    PROBE_SECONDS = 5.0

    def __init__(
        self,
        dsn: str,
        on_notify: dict[str, Callable[[str], None]],
        on_connect: Callable[[asyncpg.Connection], Awaitable[None]],
    ) -> None:
        self.dsn = dsn
        self.on_notify = on_notify
        self.on_connect = on_connect
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after each loss."""
        while True:
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=2.0)
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                for channel, handler in self.on_notify.items():
                    await conn.add_listener(channel, lambda *notification, run=handler: run(notification[3]))
                await self.on_connect(conn)
                self.connected.set()
                while not lost.is_set():  # a silently dead socket (no RST) is found by a probe
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(lost.wait(), self.PROBE_SECONDS)
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=self.PROBE_SECONDS)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                log.warning("listener on %s: %s", ", ".join(self.on_notify), error.__class__.__name__)
            finally:
                self.connected.clear()
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(self.RETRY_SECONDS)
