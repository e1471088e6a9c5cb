"""The schema: its constraints refuse bad rows, applying it again changes nothing, and an
older database (the public repository's shape) is upgraded with its history reconciled."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.support.db import assert_balances_reconcile, assert_counters_exact, connected, table_rows
from tests.support.stack import NETWORK_SQL, TEMPLATE, with_database
from travel import database
from travel.startup.embedded import EmbeddedStack

_database_numbers = itertools.count(1)


async def create_database(stack: EmbeddedStack, template: str = "template1") -> str:
    """A new database on the session's server, copied from `template`; returns its URL."""
    name = f"schema_test_{next(_database_numbers)}"
    async with connected(stack.postgres.url) as admin:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    return with_database(stack.postgres.url, name)


@pytest.fixture
async def empty_conn(stack: EmbeddedStack) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a brand-new database holding nothing of ours."""
    async with connected(await create_database(stack)) as conn:
        yield conn


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's database (schema applied, small network loaded)."""
    async with connected(database_url) as connection:
        yield connection


async def execute_schema_files(conn: asyncpg.Connection) -> None:
    """Run the schema files as database.apply_schema does, without its digest short cut."""
    async with conn.transaction():
        for name in database.SCHEMA_FILES:
            await conn.execute((database.SQL_DIR / name).read_text())


# ------------------------------------------------------------------------ constraints
# One user with one card, a recharge and a trip (each id 1, the first of a fresh database):
# what the refused statements collide with.
SEED_SQL = """
INSERT INTO users (first_name, last_name, email, id_number) VALUES ('Ana', 'Gómez', 'ana@example.co', '10001');
INSERT INTO cards (card_number, user_id, balance) VALUES ('1000000000001', 1, 2050);
INSERT INTO recharges (card_id, recharge_point_id, amount) VALUES (1, 1, 5000);
INSERT INTO trips (card_id, route_id, boarding_station_id, fare_id, fare_charged)
    SELECT 1, 1, 1, fare_id, value FROM fares WHERE fare_type = 'STANDARD_SITP';
"""
# Every table a refused statement could have written to, counters included.
WATCHED_TABLES = (
    "users",
    "cards",
    "recharges",
    "trips",
    "fares",
    "write_tokens",
    "idempotency_keys",
    "trip_counters",
    "user_counters",
    "user_active_cards",
)
NEW_USER = "INSERT INTO users (first_name, last_name, email, id_number) VALUES ('Eva', 'Ríos', {email}, {id_number})"
NEW_TRIP = "INSERT INTO trips (card_id, route_id, boarding_station_id, fare_id) VALUES (1, {route}, {station}, {fare})"

REFUSED = {
    # CHECK constraints
    "balance below zero": ("UPDATE cards SET balance = -1 WHERE card_id = 1", asyncpg.CheckViolationError),
    "recharge of zero": ("INSERT INTO recharges (card_id, amount) VALUES (1, 0)", asyncpg.CheckViolationError),
    "negative recharge": ("INSERT INTO recharges (card_id, amount) VALUES (1, -500)", asyncpg.CheckViolationError),
    "unknown card status": ("UPDATE cards SET status = 'stolen' WHERE card_id = 1", asyncpg.CheckViolationError),
    "card number with letters": (
        "INSERT INTO cards (card_number, user_id) VALUES ('10000000AB', 1)",
        asyncpg.CheckViolationError,
    ),
    "card number too short": (
        "INSERT INTO cards (card_number, user_id) VALUES ('1234567', 1)",
        asyncpg.CheckViolationError,
    ),
    "alighting before boarding": (
        "UPDATE trips SET disembarking_station_id = 2, disembarking_time = boarding_time - interval '1 minute'",
        asyncpg.CheckViolationError,
    ),
    "alighting time without station": (
        "UPDATE trips SET disembarking_time = boarding_time + interval '5 minutes'",
        asyncpg.CheckViolationError,
    ),
    "negative fare charged": ("UPDATE trips SET fare_charged = -1", asyncpg.CheckViolationError),
    "negative fare value": (
        "INSERT INTO fares (fare_type, value, start_date) VALUES ('NIGHT', -1, '2025-01-01')",
        asyncpg.CheckViolationError,
    ),
    "fare ending before it starts": (
        "INSERT INTO fares (fare_type, value, start_date, end_date) VALUES ('NIGHT', 100, '2025-02-01', '2025-01-31')",
        asyncpg.CheckViolationError,
    ),
    "malformed email": (NEW_USER.format(email="'eva.example.co'", id_number="'20002'"), asyncpg.CheckViolationError),
    "token hash not sha256": (
        "INSERT INTO write_tokens (token_hash, role, label) VALUES ('\\x00', 'admin', 'x')",
        asyncpg.CheckViolationError,
    ),
    "recharge-point token without its point": (
        "INSERT INTO write_tokens (token_hash, role, label) VALUES (sha256('t'), 'recharge_point', 'x')",
        asyncpg.CheckViolationError,
    ),
    # UNIQUE constraints
    "duplicate email": (NEW_USER.format(email="'ana@example.co'", id_number="'20002'"), asyncpg.UniqueViolationError),
    "duplicate email in another case": (
        NEW_USER.format(email="'ANA@Example.CO'", id_number="'20002'"),
        asyncpg.UniqueViolationError,
    ),
    "duplicate id_number": (
        NEW_USER.format(email="'eva@example.co'", id_number="'10001'"),
        asyncpg.UniqueViolationError,
    ),
    "duplicate card_number": (
        "INSERT INTO cards (card_number, user_id) VALUES ('1000000000001', 1)",
        asyncpg.UniqueViolationError,
    ),
    "duplicate transaction_id": (
        "INSERT INTO recharges (card_id, amount, transaction_id) SELECT 1, 100, transaction_id FROM recharges",
        asyncpg.UniqueViolationError,
    ),
    # FOREIGN KEY constraints
    "card of unknown user": (
        "INSERT INTO cards (card_number, user_id) VALUES ('1000000000999', 999)",
        asyncpg.ForeignKeyViolationError,
    ),
    "recharge of unknown card": (
        "INSERT INTO recharges (card_id, amount) VALUES (999, 100)",
        asyncpg.ForeignKeyViolationError,
    ),
    "recharge at unknown point": (
        "INSERT INTO recharges (card_id, recharge_point_id, amount) VALUES (1, 999, 100)",
        asyncpg.ForeignKeyViolationError,
    ),
    "trip on unknown route": (NEW_TRIP.format(route=999, station=1, fare=1), asyncpg.ForeignKeyViolationError),
    "trip from unknown station": (NEW_TRIP.format(route=1, station=999, fare=1), asyncpg.ForeignKeyViolationError),
    "trip at unknown fare": (NEW_TRIP.format(route=1, station=1, fare=999), asyncpg.ForeignKeyViolationError),
    "deleting a card with history": ("DELETE FROM cards WHERE card_id = 1", asyncpg.ForeignKeyViolationError),
    "deleting a user with cards": ("DELETE FROM users WHERE user_id = 1", asyncpg.ForeignKeyViolationError),
}


@pytest.fixture(scope="module")
async def seeded_conn(stack: EmbeddedStack, template_url: str) -> AsyncIterator[asyncpg.Connection]:
    """One database with SEED_SQL loaded, shared by the constraint cases (each rolls back)."""
    async with connected(await create_database(stack, TEMPLATE)) as conn:
        await conn.execute(SEED_SQL)
        yield conn


async def watched_rows(conn: asyncpg.Connection) -> dict[str, list[str]]:
    return {table: await table_rows(conn, table) for table in WATCHED_TABLES}


@pytest.mark.parametrize(("statement", "error"), REFUSED.values(), ids=REFUSED.keys())
async def test_constraint_refuses_and_nothing_is_written(
    seeded_conn: asyncpg.Connection, statement: str, error: type[asyncpg.PostgresError]
) -> None:
    before = await watched_rows(seeded_conn)
    isolation = seeded_conn.transaction()  # undoes whatever a wrongly accepted statement did
    await isolation.start()
    try:
        with pytest.raises(error):
            async with seeded_conn.transaction():  # a savepoint: the transaction stays usable
                await seeded_conn.execute(statement)
        assert await watched_rows(seeded_conn) == before
    finally:
        await isolation.rollback()


# ------------------------------------------------------------------------ idempotent application
CATALOG_QUERIES = {
    "relations": "SELECT relname, relkind FROM pg_class WHERE relnamespace = 'public'::regnamespace ORDER BY 1",
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               a.attidentity, pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
    "functions": """
        SELECT oid::regprocedure::text, pg_get_functiondef(oid) FROM pg_proc
        WHERE pronamespace = 'public'::regnamespace ORDER BY 1""",
    "triggers": "SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger"
    " WHERE NOT tgisinternal ORDER BY 1, 2",
}


async def database_snapshot(conn: asyncpg.Connection) -> dict[str, Any]:
    """The catalog (tables, columns, constraints, indexes, functions, triggers) and every table's rows."""
    snapshot: dict[str, Any] = {
        name: [tuple(row) for row in await conn.fetch(query)] for name, query in CATALOG_QUERIES.items()
    }
    tables = await conn.fetch(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' ORDER BY 1"
    )
    snapshot["data"] = {row["relname"]: await table_rows(conn, row["relname"]) for row in tables}
    return snapshot


async def test_applying_the_schema_files_again_changes_nothing(conn: asyncpg.Connection) -> None:
    # History of every kind, so that the counters and the upgrade block have rows to touch.
    await conn.execute("""
        SELECT create_user('Ana', 'Gómez', 'ana@example.co', '10001', NULL, NULL, NULL, NULL, NULL);
        SELECT issue_card(1, NULL);
        SELECT recharge_card(1, 10000, 1, NULL, NULL);
        SELECT end_trip((board_trip(1, 1, 1)).trip_id, 2);
        SELECT board_trip(1, 3, 3);
    """)
    before = await database_snapshot(conn)
    assert before["data"]["trips"] and before["data"]["trip_counters"]
    await execute_schema_files(conn)
    assert await database_snapshot(conn) == before


async def test_apply_schema_applies_once_then_reports_nothing_to_do(empty_conn: asyncpg.Connection) -> None:
    assert await database.apply_schema(empty_conn) is True
    applied = await database_snapshot(empty_conn)
    assert await database.apply_schema(empty_conn) is False
    assert await database_snapshot(empty_conn) == applied


# ------------------------------------------------------------------------ upgrade of an older database
# The public repository's shape: our schema without the columns and tables we added.
OLDER_SHAPE_SQL = """
ALTER TABLE trips DROP COLUMN fare_charged;
ALTER TABLE cards DROP COLUMN opening_balance;
DROP TABLE idempotency_keys, write_tokens, trip_counters, user_counters, user_active_cards;
DROP SEQUENCE card_number_seq;
"""
# Cards whose balances carry money from before the recorded history (see OPENING_BALANCES).
OLDER_HISTORY_SQL = """
INSERT INTO users (user_id, first_name, last_name, email, id_number) VALUES
    (1, 'Ana', 'Gómez', 'ana@example.co', '10001'),
    (2, 'Luis', 'Pérez', 'luis@example.co', '10002'),
    (3, 'Sara', 'Ruiz', 'sara@example.co', '10003');
INSERT INTO cards (card_id, card_number, user_id, status, balance) VALUES
    (1, '1000000000001', 1, 'active', 12000),
    (2, '1000000000002', 2, 'active', 0),
    (3, '1000000000003', 2, 'blocked', 700),
    (4, '1000000000004', 3, 'active', 50);
INSERT INTO recharges (card_id, recharge_point_id, amount, recharge_timestamp) VALUES
    (1, 1, 5000, '2025-03-01 06:00-05'), (1, 2, 4000, '2025-03-02 06:00-05'), (4, 1, 3000, '2025-03-01 06:00-05');
INSERT INTO trips (trip_id, card_id, route_id, boarding_station_id, disembarking_station_id,
                   boarding_time, disembarking_time, fare_id, is_transfer, transfer_group_id)
SELECT v.trip_id, v.card_id, v.route_id, v.boarding_station_id, v.disembarking_station_id,
       v.boarding_time::timestamptz, v.disembarking_time::timestamptz, f.fare_id, v.is_transfer, v.transfer_group_id
FROM (VALUES
    (1, 1, 1, 1, 2,    '2025-03-01 07:00-05', '2025-03-01 07:40-05', 'STANDARD_SITP',     false, NULL),
    (2, 1, 2, 2, NULL, '2025-03-01 08:00-05', NULL,                  'TRANSFER_200_COST', true,  1),
    (3, 4, 1, 1, 2,    '2025-03-01 07:00-05', '2025-03-01 07:30-05', 'STANDARD_SITP',     false, NULL),
    (4, 4, 3, 3, 4,    '2025-03-03 09:00-05', '2025-03-03 09:20-05', 'STANDARD_CABLE',    false, NULL)
) AS v(trip_id, card_id, route_id, boarding_station_id, disembarking_station_id,
       boarding_time, disembarking_time, fare_type, is_transfer, transfer_group_id)
JOIN fares f ON f.fare_type = v.fare_type;
-- As the identity would be after those trips had been inserted without explicit ids.
SELECT setval(pg_get_serial_sequence('trips', 'trip_id'), 4);
"""
# balance - recharges + fares: 12000 - 9000 + 3150, nothing recorded, untouched 700, 50 - 3000 + 5900.
OPENING_BALANCES = {1: 6150, 2: 0, 3: 700, 4: 2950}
FARES_CHARGED = {1: 2950, 2: 200, 3: 2950, 4: 2950}
# The upgrade adds columns and must leave every older column of every row as it was.
OLDER_COLUMNS_SQL = (
    "SELECT array_agg((to_jsonb(t) - 'fare_charged' - 'opening_balance')::text ORDER BY 1) FROM {table} t"
)


async def test_upgrade_of_an_older_database_keeps_and_reconciles_its_history(empty_conn: asyncpg.Connection) -> None:
    conn = empty_conn
    await conn.execute((database.SQL_DIR / "schema.sql").read_text())
    await conn.execute(OLDER_SHAPE_SQL)
    await conn.execute((database.SQL_DIR / "reference.sql").read_text())
    await conn.execute(NETWORK_SQL)
    await conn.execute(OLDER_HISTORY_SQL)
    history_tables = ("users", "cards", "recharges", "trips", "fares", "stations", "routes")
    older = {table: await conn.fetchval(OLDER_COLUMNS_SQL.format(table=table)) for table in history_tables}

    assert await database.apply_schema(conn) is True

    assert {table: await conn.fetchval(OLDER_COLUMNS_SQL.format(table=table)) for table in history_tables} == older
    assert {row[0]: row[1] for row in await conn.fetch("SELECT trip_id, fare_charged FROM trips")} == FARES_CHARGED
    assert {
        row[0]: row[1] for row in await conn.fetch("SELECT card_id, opening_balance FROM cards")
    } == OPENING_BALANCES
    await assert_balances_reconcile(conn)
    await assert_counters_exact(conn)
    # The upgraded database goes on counting and reconciling new writes.
    await conn.execute("SELECT board_trip(1, 1, 1)")
    assert await conn.fetchval("SELECT balance FROM cards WHERE card_id = 1") == 12000 - 2950
    await assert_balances_reconcile(conn)
    await assert_counters_exact(conn)
