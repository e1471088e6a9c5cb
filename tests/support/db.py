"""Shared by the database-layer tests: connections, domain refusals, exact aggregates, money."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import asyncpg
import pytest

from travel.database import QUERIES

Executor = asyncpg.Pool | asyncpg.Connection


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[asyncpg.Connection]:
    """One connection to `url`, closed on the way out."""
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


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
