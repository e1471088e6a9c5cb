"""Shared by the database-layer tests: connections, domain refusals, exact aggregates, money, and
the write functions of sql/functions.sql called directly (no HTTP: `new_card` here is a card made
in SQL; tests.support.api.make_user_with_card makes one through the API)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import urllib.parse
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import asyncpg
import pytest

from tests.support.polling import eventually_async
from travel.database import QUERIES
from travel.startup import embedded

Executor = asyncpg.Pool | asyncpg.Connection


def pg_environment(url: str, database: str | None = None, **extra: str) -> dict[str, str]:
    """libpq's environment for the server of `url`, as the deploy and backup scripts read it: on
    `database` (else the database of `url`), with `extra` on top."""
    parts = urllib.parse.urlsplit(url)
    return {
        **os.environ,
        "PGHOST": parts.hostname or "",
        "PGPORT": str(parts.port),
        "PGUSER": parts.username or "",
        "PGPASSWORD": urllib.parse.unquote(parts.password or ""),
        "PGDATABASE": parts.path.lstrip("/") if database is None else database,
        "PG_BIN_DIR": str(embedded.postgres_bin_dir()),
        **extra,
    }


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    """One connection to `url`, closed on the way out."""
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def until_a_session_waits_on_a_lock(conn: asyncpg.Connection, what: str, within: float = 10) -> None:
    """Poll pg_stat_activity (on `conn`, which must not be the one blocked) until a session of
    this database waits on a lock: a write is inside its function, blocked."""

    async def waiting() -> bool:
        return bool(await conn.fetchval(_WAITING_ON_A_LOCK))

    await eventually_async(waiting, within, what, every=0.01)


_WAITING_ON_A_LOCK = (
    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
)


async def refusal(sqlstate: str, call: Awaitable[Any]) -> dict[str, Any]:
    """Await `call`, expect it to fail with `sqlstate`, and return its DETAIL JSON."""
    with pytest.raises(asyncpg.PostgresError) as caught:
        await call
    assert caught.value.sqlstate == sqlstate, f"{caught.value.sqlstate}: {caught.value}"
    return json.loads(caught.value.detail or "{}")


async def table_rows(db: Executor, table: str) -> list[str]:
    """Every row of `table` as text, sorted: equal lists mean equal contents."""
    return await db.fetchval(f"SELECT coalesce(array_agg(t::text ORDER BY t::text), '{{}}') FROM {table} t")


# Per locality, what the triggers maintained and what the base table says.
_TRIPS_MAINTAINED = """
    SELECT location_id, sum(trips)::bigint, sum(completed_trips)::bigint, sum(revenue)::bigint
    FROM trip_counters GROUP BY location_id
    HAVING sum(trips) <> 0 OR sum(completed_trips) <> 0 OR sum(revenue) <> 0
    ORDER BY location_id"""
_TRIPS_RECOMPUTED = """
    SELECT coalesce(s.location_id, 0), count(*), count(t.disembarking_time), sum(t.fare_charged)::bigint
    FROM trips t LEFT JOIN stations s ON s.station_id = t.boarding_station_id
    GROUP BY 1 ORDER BY 1"""
_USERS_MAINTAINED = "SELECT coalesce(sum(users), 0)::bigint, coalesce(sum(active_users), 0)::bigint FROM user_counters"
_USERS_RECOMPUTED = """
    SELECT (SELECT count(*) FROM users), (SELECT count(DISTINCT user_id) FROM cards WHERE status = 'active')"""


async def assert_counters_exact(db: Executor) -> None:
    """trip_counters and user_counters equal the figures recomputed from the base tables."""
    trips = [[tuple(row) for row in await db.fetch(query)] for query in (_TRIPS_MAINTAINED, _TRIPS_RECOMPUTED)]
    assert trips[0] == trips[1], f"trip counters {trips[0]} != recomputed {trips[1]}"
    users = [tuple(await db.fetchrow(query)) for query in (_USERS_MAINTAINED, _USERS_RECOMPUTED)]
    assert users[0] == users[1], f"user counters {users[0]} != recomputed {users[1]}"


async def assert_balances_reconcile(db: Executor) -> None:
    """Every card's balance is its opening balance plus its recharges minus its fares
    charged, and none is negative (sql/queries/unreconciled-cards.sql)."""
    mismatched = await QUERIES["unreconciled-cards"](db)
    assert not mismatched, f"balances off: {[dict(row) for row in mismatched]}"


# ------------------------------------------------------------------------ the write functions, in SQL
FULL_FARE = 2950  # STANDARD_SITP and STANDARD_CABLE
TRANSFER_FARE = 200  # TRANSFER_200_COST
# The test network (tests/support/stack.py: NETWORK_SQL): stations 1-4, two bus routes, a cable route, a retired one.
BUS_ROUTE, OTHER_BUS_ROUTE, CABLE_ROUTE, RETIRED_ROUTE = 1, 2, 3, 4
STATIONS = (1, 2, 3, 4)
RECHARGE_POINT = 1
UNKNOWN = 999_999
_riders = itertools.count(1)


# ------------------------------------------------------------------------ calls
async def create_user(db: Executor, email: str | None = None) -> asyncpg.Record:
    rider = next(_riders)
    return await db.fetchrow(
        "SELECT * FROM create_user($1, $2, $3, $4, NULL, NULL, NULL, NULL, NULL)",
        "Ana",
        "Gómez",
        email or f"rider{rider}@example.co",
        f"ID-{rider:06d}",
    )


async def issue_card(db: Executor, user_id: int, card_number: str | None = None) -> asyncpg.Record:
    return await db.fetchrow("SELECT * FROM issue_card($1, $2)", user_id, card_number)


async def set_card_status(db: Executor, card_id: int, status: str) -> asyncpg.Record:
    return await db.fetchrow("SELECT * FROM set_card_status($1, $2)", card_id, status)


async def recharge(
    db: Executor,
    card_id: int,
    amount: int,
    *,
    point: int | None = RECHARGE_POINT,
    token_id: int | None = None,
    key: str | None = None,
) -> asyncpg.Record:
    return await db.fetchrow("SELECT * FROM recharge_card($1, $2, $3, $4, $5)", card_id, amount, point, token_id, key)


async def board(db: Executor, card_id: int, route_id: int = BUS_ROUTE, station_id: int = 1) -> asyncpg.Record:
    return await db.fetchrow("SELECT * FROM board_trip($1, $2, $3)", card_id, route_id, station_id)


async def end_trip(db: Executor, trip_id: int, station_id: int = 2) -> asyncpg.Record:
    return await db.fetchrow("SELECT * FROM end_trip($1, $2)", trip_id, station_id)


# ------------------------------------------------------------------------ set-up and reads
async def new_card(db: Executor, balance: int = 0) -> int:
    """A new user's card, funded by a recharge so that its history reconciles."""
    card_id = (await issue_card(db, (await create_user(db))["user_id"]))["card_id"]
    if balance:
        await recharge(db, card_id, balance)
    return card_id


async def new_token(db: Executor) -> int:
    return await db.fetchval("SELECT register_token($1, 'recharge_point', 'test', $2)", os.urandom(32), RECHARGE_POINT)


async def balance_of(db: Executor, card_id: int) -> int:
    return await db.fetchval("SELECT balance FROM cards WHERE card_id = $1", card_id)


async def count_of(db: Executor, table: str, card_id: int) -> int:
    return await db.fetchval(f"SELECT count(*) FROM {table} WHERE card_id = $1", card_id)


async def fare_type_of(db: Executor, fare_id: int) -> str:
    return await db.fetchval("SELECT fare_type FROM fares WHERE fare_id = $1", fare_id)


@contextlib.asynccontextmanager
async def connections(pool: asyncpg.Pool, count: int) -> AsyncIterator[list[asyncpg.Connection]]:
    """`count` distinct connections held at once, so that calls made on them truly overlap."""
    async with contextlib.AsyncExitStack() as held:
        yield [await held.enter_async_context(pool.acquire()) for _ in range(count)]  # type: ignore[arg-type]
