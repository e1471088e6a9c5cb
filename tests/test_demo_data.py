"""Demo data generated inside PostgreSQL (sql/demo_data.sql) at the default scale: the counts
the scale promises, money that reconciles card by card, a network of every kind, a history
that follows board_trip's rules, exact counters, and a loader that never loads twice."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support.db import assert_balances_reconcile, assert_counters_exact, connected, refusal
from tests.support.stack import copy_template
from travel import database
from travel.startup.embedded import EmbeddedStack

SCALE = 1
DEMO_DATABASE = "demo_data"
BIG_TABLES = ["users", "cards", "trips", "recharges"]
_INDEXES = "SELECT array_agg(indexdef ORDER BY indexname) FROM pg_indexes WHERE tablename = ANY($1::text[])"


@pytest.fixture(scope="module")
async def demo(stack: EmbeddedStack, template_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A database loaded once at SCALE over the template's small network (stations 1-4,
    routes 1-4 already there), shared by this module's read-only checks."""
    async with connected(await copy_template(stack, DEMO_DATABASE)) as conn:
        assert await database.load_demo_data(conn, SCALE)
        yield conn


async def test_counts_follow_the_scale(demo: asyncpg.Connection) -> None:
    counts = await demo.fetchrow("""
        SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM cards) AS cards,
               (SELECT count(*) FROM trips) AS trips, (SELECT count(*) FROM recharges) AS recharges,
               (SELECT count(*) FROM (SELECT user_id FROM cards GROUP BY user_id HAVING count(*) = 2) two) AS two_cards,
               (SELECT count(*) FROM users u WHERE NOT EXISTS (SELECT FROM cards c WHERE c.user_id = u.user_id)) AS no_card""")
    assert dict(counts) | {"recharges": None} == {
        "users": 8_000 * SCALE,
        "cards": 10_000 * SCALE,
        "trips": 100_000 * SCALE,
        "recharges": None,
        "two_cards": 2_000 * SCALE,
        "no_card": 0,
    }
    assert 10_000 * SCALE < counts["recharges"] < 100_000 * SCALE


async def test_every_balance_reconciles_and_never_went_below_zero(demo: asyncpg.Connection) -> None:
    await assert_balances_reconcile(demo)
    # Replaying each card's recharges and boardings in time order: never short of the fare.
    lowest = await demo.fetchrow("""
        WITH movement AS (
            SELECT card_id, recharge_timestamp AS at, amount AS delta FROM recharges
            UNION ALL
            SELECT card_id, boarding_time, -fare_charged FROM trips)
        SELECT min(running) AS running, (SELECT min(balance) FROM cards) AS balance,
               (SELECT min(opening_balance) FROM cards) AS opening
        FROM (SELECT sum(delta) OVER (PARTITION BY card_id ORDER BY at, delta DESC) AS running FROM movement) m""")
    assert lowest["running"] >= 0 and lowest["balance"] >= 0 and lowest["opening"] == 0
    amounts = await demo.fetchrow("""
        SELECT min(amount) AS low, max(amount) AS high, bool_and(amount % 100 = 0) AS round,
               count(*) FILTER (WHERE recharge_point_id IS NULL) AS without_point FROM recharges""")
    assert 2_000 <= amounts["low"] and amounts["high"] <= 50_000
    assert amounts["round"] and amounts["without_point"] == 0


async def test_the_network_has_every_kind_in_bogota(demo: asyncpg.Connection) -> None:
    kinds = await demo.fetchrow("""
        SELECT (SELECT array_agg(DISTINCT station_type ORDER BY station_type) FROM stations) AS station_types,
               (SELECT array_agg(DISTINCT route_type ORDER BY route_type) FROM routes) AS route_types,
               (SELECT count(*) FROM stations) AS stations, (SELECT count(*) FROM routes) AS routes,
               (SELECT count(DISTINCT location_id) FROM stations) AS localities""")
    assert kinds["station_types"] == ["CABLE", "PORTAL", "TRUNK", "ZONAL"]
    assert kinds["route_types"] == ["CABLE", "FEEDER", "TRUNK", "ZONAL"]
    assert kinds["stations"] >= 150 and kinds["routes"] >= 100 and kinds["localities"] == 20
    misplaced = await demo.fetchval("""
        SELECT count(*) FROM stations
        WHERE station_id > 4 AND (location_id IS NULL OR latitude NOT BETWEEN 4.1 AND 4.8
                                  OR longitude NOT BETWEEN -74.25 AND -74.0)""")
    assert misplaced == 0
    # A route starts and ends at its first and last stop, and every trip boards and alights on it.
    off_route = await demo.fetchrow("""
        SELECT (SELECT count(*) FROM routes r
                CROSS JOIN LATERAL (SELECT array_agg(i.station_id ORDER BY i.sequence_order) AS stops
                                    FROM intermediate_stations i WHERE i.route_id = r.route_id) AS s
                WHERE r.route_id > 4 AND (r.origin_station_id IS DISTINCT FROM s.stops[1]
                                          OR r.destination_station_id IS DISTINCT FROM s.stops[cardinality(s.stops)])
               ) AS routes,
               (SELECT count(*) FROM trips t
                WHERE NOT EXISTS (SELECT FROM intermediate_stations i
                                  WHERE i.route_id = t.route_id AND i.station_id = t.boarding_station_id)
                   OR (t.disembarking_station_id IS NOT NULL
                       AND NOT EXISTS (SELECT FROM intermediate_stations i
                                       WHERE i.route_id = t.route_id AND i.station_id = t.disembarking_station_id))
                ) AS trips,
               (SELECT count(*) FROM trips t JOIN routes r USING (route_id)
                LEFT JOIN vehicles v USING (vehicle_id) LEFT JOIN drivers d USING (driver_id)
                WHERE v.concessionaire_id IS DISTINCT FROM r.concessionaire_id
                   OR d.concessionaire_id IS DISTINCT FROM r.concessionaire_id) AS crews,
               (SELECT count(*) FROM trips WHERE route_id <= 4) AS on_fixture_routes""")
    assert dict(off_route) == {"routes": 0, "trips": 0, "crews": 0, "on_fixture_routes": 0}


async def test_history_spreads_over_months_at_rush_hours(demo: asyncpg.Connection) -> None:
    spread = await demo.fetchrow("""
        SELECT count(DISTINCT date_trunc('month', boarding_time)) AS months,
               bool_and(boarding_time < now() AND boarding_time > now() - interval '190 days') AS recent,
               count(*) FILTER (WHERE disembarking_time IS NULL) AS open,
               count(*) FILTER (WHERE disembarking_time > boarding_time) AS completed,
               count(*) FILTER (WHERE extract(hour FROM boarding_time AT TIME ZONE 'America/Bogota') BETWEEN 6 AND 8) AS morning,
               count(*) FILTER (WHERE extract(hour FROM boarding_time AT TIME ZONE 'America/Bogota') BETWEEN 17 AND 19) AS evening,
               count(*) FILTER (WHERE extract(hour FROM boarding_time AT TIME ZONE 'America/Bogota') NOT BETWEEN 5 AND 22) AS night
        FROM trips""")
    trips = 100_000 * SCALE
    assert spread["months"] >= 5 and spread["recent"]
    assert spread["open"] + spread["completed"] == trips and min(spread["open"], spread["completed"]) > trips // 5
    assert spread["morning"] > trips // 4 and spread["evening"] > trips // 4 and spread["night"] == 0


async def test_transfers_follow_the_boarding_rule_and_fares(demo: asyncpg.Connection) -> None:
    """is_transfer, transfer_group_id and the fare recomputed with board_trip's rule over
    each card's previous boarding: 90 minutes, another route, free onto a cable."""
    checked = await demo.fetchrow("""
        WITH history AS (
            SELECT t.*, r.route_type, f.fare_type, f.value,
                   lag(t.trip_id) OVER card AS previous_id, lag(t.route_id) OVER card AS previous_route,
                   lag(t.boarding_time) OVER card AS previous_time,
                   lag(t.transfer_group_id) OVER card AS previous_group
            FROM trips t JOIN routes r USING (route_id) JOIN fares f USING (fare_id)
            WINDOW card AS (PARTITION BY t.card_id ORDER BY t.boarding_time, t.trip_id))
        SELECT count(*) FILTER (WHERE is_transfer) AS transfers,
               count(*) FILTER (WHERE fare_type = 'TRANSFER_0_COST') AS onto_cable,
               count(*) FILTER (WHERE is_transfer <> coalesce(previous_route <> route_id
                                      AND previous_time > boarding_time - interval '90 minutes', false)) AS wrong_rule,
               count(*) FILTER (WHERE transfer_group_id IS DISTINCT FROM
                                      CASE WHEN is_transfer THEN coalesce(previous_group, previous_id) END) AS wrong_group,
               count(*) FILTER (WHERE fare_charged <> value OR fare_type <> CASE
                   WHEN is_transfer AND route_type = 'CABLE' THEN 'TRANSFER_0_COST'
                   WHEN is_transfer THEN 'TRANSFER_200_COST'
                   WHEN route_type = 'CABLE' THEN 'STANDARD_CABLE' ELSE 'STANDARD_SITP' END) AS wrong_fare
        FROM history""")
    assert checked["transfers"] > 10_000 * SCALE and checked["onto_cable"] > 0
    assert (checked["wrong_rule"], checked["wrong_group"], checked["wrong_fare"]) == (0, 0, 0)


async def test_dates_and_statuses_follow_each_card(demo: asyncpg.Connection) -> None:
    wrong = await demo.fetchrow("""
        SELECT count(*) FILTER (WHERE c.last_used_date IS DISTINCT FROM t.last_boarding) AS last_used,
               count(*) FILTER (WHERE c.acquisition_date > least(t.first_boarding, r.first_recharge)) AS acquired,
               count(*) FILTER (WHERE u.registration_date > c.acquisition_date) AS registered,
               count(*) FILTER (WHERE c.update_date < greatest(t.last_boarding, r.last_recharge)) AS updated
        FROM cards c JOIN users u USING (user_id)
        LEFT JOIN (SELECT card_id, min(boarding_time) AS first_boarding, max(boarding_time) AS last_boarding
                   FROM trips GROUP BY card_id) t USING (card_id)
        LEFT JOIN (SELECT card_id, min(recharge_timestamp) AS first_recharge, max(recharge_timestamp) AS last_recharge
                   FROM recharges GROUP BY card_id) r USING (card_id)""")
    assert dict(wrong) == {"last_used": 0, "acquired": 0, "registered": 0, "updated": 0}
    statuses = {row[0]: row[1] for row in await demo.fetch("SELECT status, count(*) FROM cards GROUP BY status")}
    assert statuses.keys() == {"active", "blocked", "lost", "inactive"}
    assert 0.85 < statuses["active"] / (10_000 * SCALE) < 0.95


async def test_counters_equal_the_base_tables(demo: asyncpg.Connection) -> None:
    await assert_counters_exact(demo)
    assert await demo.fetchval("SELECT sum(trips) FROM trip_counters") == 100_000 * SCALE


async def test_indexes_are_back_and_ids_continue(demo: asyncpg.Connection, template_url: str) -> None:
    """The loader drops the big tables' secondary indexes for speed: all come back. The next
    user, card, recharge and trip made by the write functions get fresh ids."""
    async with connected(template_url) as template:
        assert await demo.fetchval(_INDEXES, BIG_TABLES) == await template.fetchval(_INDEXES, BIG_TABLES)
    transaction = demo.transaction()
    await transaction.start()
    try:
        user = await demo.fetchrow(
            "SELECT * FROM create_user('Ana', 'Gómez Ruiz', 'ana.nueva@example.co',"
            " '1099999999', NULL, 'F', NULL, NULL, NULL)"
        )
        card = await demo.fetchrow("SELECT * FROM issue_card($1, NULL)", user["user_id"])
        last_recharge_id = await demo.fetchval("SELECT max(recharge_id) FROM recharges")
        recharge = await demo.fetchrow("SELECT * FROM recharge_card($1, 10000, NULL, NULL, NULL)", card["card_id"])
        route = await demo.fetchrow("""SELECT r.route_id, i.station_id FROM routes r
                                       JOIN intermediate_stations i USING (route_id)
                                       WHERE r.route_type = 'TRUNK' AND r.is_active LIMIT 1""")
        trip = await demo.fetchrow("SELECT * FROM board_trip($1, $2, $3)", card["card_id"], *route)
        assert (user["user_id"], card["card_id"]) == (8_000 * SCALE + 1, 10_000 * SCALE + 1)
        assert recharge["recharge_id"] == last_recharge_id + 1
        assert (trip["trip_id"], trip["balance"]) == (100_000 * SCALE + 1, 10000 - 2950)
    finally:
        await transaction.rollback()


async def test_loading_again_changes_nothing(demo: asyncpg.Connection) -> None:
    before = await demo.fetchrow("SELECT (SELECT count(*) FROM trips), (SELECT count(*) FROM stations)")
    assert not await database.load_demo_data(demo, SCALE)
    await refusal("55000", demo.execute("SELECT load_demo_data(1)"))
    assert await demo.fetchrow("SELECT (SELECT count(*) FROM trips), (SELECT count(*) FROM stations)") == before
