"""The write functions of sql/functions.sql, called directly: what they charge, what they
refuse (SQLSTATE and DETAIL), idempotency, and exactness under concurrent writers."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from tests.support.db import (
    BUS_ROUTE,
    CABLE_ROUTE,
    FULL_FARE,
    OTHER_BUS_ROUTE,
    RECHARGE_POINT,
    RETIRED_ROUTE,
    STATIONS,
    TRANSFER_FARE,
    UNKNOWN,
    assert_balances_reconcile,
    assert_counters_exact,
    balance_of,
    board,
    connections,
    count_of,
    create_user,
    end_trip,
    fare_type_of,
    issue_card,
    new_card,
    new_token,
    recharge,
    refusal,
    set_card_status,
)


# ------------------------------------------------------------------------ recharge_card
async def test_recharge_adds_exactly_its_amount(pool: asyncpg.Pool) -> None:
    card = await new_card(pool, 1000)
    done = await recharge(pool, card, 2500)
    assert (done["card_id"], done["amount"], done["balance"], done["replayed"]) == (card, 2500, 3500, False)
    assert await balance_of(pool, card) == 3500
    stored = await pool.fetchrow("SELECT * FROM recharges WHERE recharge_id = $1", done["recharge_id"])
    assert (stored["card_id"], stored["amount"], stored["recharge_point_id"]) == (card, 2500, RECHARGE_POINT)


@pytest.mark.parametrize("status", ["blocked", "lost", "inactive"])
async def test_recharge_of_a_card_not_active_is_refused(pool: asyncpg.Pool, status: str) -> None:
    card = await new_card(pool, 1000)
    await set_card_status(pool, card, status)
    assert (await refusal("TRC01", recharge(pool, card, 500)))["card_id"] == card
    assert (await balance_of(pool, card), await count_of(pool, "recharges", card)) == (1000, 1)


async def test_recharge_of_an_unknown_card_or_at_an_unknown_point_is_refused(pool: asyncpg.Pool) -> None:
    card = await new_card(pool, 1000)
    assert (await refusal("TRN01", recharge(pool, UNKNOWN, 500)))["card_id"] == UNKNOWN
    assert (await refusal("TRN06", recharge(pool, card, 500, point=UNKNOWN)))["recharge_point_id"] == UNKNOWN
    assert (await balance_of(pool, card), await count_of(pool, "recharges", card)) == (1000, 1)


def answer(done: asyncpg.Record) -> tuple[object, ...]:
    """What a keyed recharge answers, less `replayed`, which tells the first from its replays."""
    return tuple(value for name, value in done.items() if name != "replayed")


async def test_same_key_and_body_replays_the_first_recharge(pool: asyncpg.Pool) -> None:
    card, token = await new_card(pool), await new_token(pool)
    first = await recharge(pool, card, 5000, token_id=token, key="k-1")
    replays = [await recharge(pool, card, 5000, token_id=token, key="k-1") for _ in range(3)]
    assert first["replayed"] is False and all(replay["replayed"] for replay in replays)
    assert {answer(replay) for replay in replays} == {answer(first)}
    assert (await balance_of(pool, card), await count_of(pool, "recharges", card)) == (5000, 1)


@pytest.mark.parametrize(
    ("to_other_card", "amount", "point"),
    [(False, 6000, RECHARGE_POINT), (True, 5000, RECHARGE_POINT), (False, 5000, 2)],
    ids=["amount", "card", "recharge point"],
)
async def test_same_key_with_another_body_is_refused(
    pool: asyncpg.Pool, to_other_card: bool, amount: int, point: int
) -> None:
    card, other_card, token = await new_card(pool), await new_card(pool), await new_token(pool)
    first = await recharge(pool, card, 5000, token_id=token, key="k-1")
    reused = recharge(pool, other_card if to_other_card else card, amount, point=point, token_id=token, key="k-1")
    assert (await refusal("TRI01", reused))["recharge_id"] == first["recharge_id"]
    assert [await balance_of(pool, c) for c in (card, other_card)] == [5000, 0]
    assert [await count_of(pool, "recharges", c) for c in (card, other_card)] == [1, 0]


async def test_idempotency_keys_are_scoped_to_their_token(pool: asyncpg.Pool) -> None:
    card = await new_card(pool)
    answers = [await recharge(pool, card, 5000, token_id=await new_token(pool), key="k-1") for _ in range(2)]
    assert [done["replayed"] for done in answers] == [False, False]
    assert answers[0]["recharge_id"] != answers[1]["recharge_id"]
    assert await balance_of(pool, card) == 10000


async def test_a_refused_keyed_recharge_does_not_use_up_its_key(pool: asyncpg.Pool) -> None:
    card, token = await new_card(pool), await new_token(pool)
    await refusal("TRN06", recharge(pool, card, 5000, point=UNKNOWN, token_id=token, key="k-1"))
    assert (await recharge(pool, card, 5000, token_id=token, key="k-1"))["replayed"] is False
    assert await balance_of(pool, card) == 5000


async def test_concurrent_recharges_of_one_card_all_count(pool: asyncpg.Pool) -> None:
    card = await new_card(pool)
    amounts = range(1, 65)
    async with connections(pool, len(amounts)) as conns:
        answers = await asyncio.gather(
            *(recharge(conn, card, amount) for conn, amount in zip(conns, amounts, strict=False))
        )
    assert await balance_of(pool, card) == sum(amounts)
    # Serialised on the card: each answer saw a different running balance, the last the total.
    assert len({done["balance"] for done in answers}) == len(amounts)
    assert max(done["balance"] for done in answers) == sum(amounts)
    assert await count_of(pool, "recharges", card) == len(amounts)


async def test_concurrent_calls_with_one_key_make_one_recharge(pool: asyncpg.Pool) -> None:
    card, token = await new_card(pool), await new_token(pool)
    async with connections(pool, 64) as conns:
        answers = await asyncio.gather(*(recharge(conn, card, 700, token_id=token, key="k-1") for conn in conns))
    assert len({answer(done) for done in answers}) == 1
    assert sorted(done["replayed"] for done in answers) == [False] + [True] * 63
    assert (await balance_of(pool, card), await count_of(pool, "recharges", card)) == (700, 1)


# ------------------------------------------------------------------------ board_trip
async def test_concurrent_boardings_never_overdraw_the_card(pool: asyncpg.Pool) -> None:
    card = await new_card(pool, 10 * FULL_FARE)
    async with connections(pool, 40) as conns:  # one route: every boarding is a full fare
        outcomes = await asyncio.gather(*(board(conn, card) for conn in conns), return_exceptions=True)
    refused = [outcome for outcome in outcomes if not isinstance(outcome, asyncpg.Record)]
    assert [getattr(error, "sqlstate", error) for error in refused] == ["TRP01"] * 30
    assert all(
        isinstance(error, asyncpg.PostgresError)
        and json.loads(error.detail)["balance"] == 0
        and json.loads(error.detail)["fare"] == FULL_FARE
        for error in refused
    )
    assert (await balance_of(pool, card), await count_of(pool, "trips", card)) == (0, 10)


@pytest.mark.parametrize(("route", "fare_type"), [(BUS_ROUTE, "STANDARD_SITP"), (CABLE_ROUTE, "STANDARD_CABLE")])
async def test_a_first_boarding_charges_the_full_fare_of_the_route_type(
    pool: asyncpg.Pool, route: int, fare_type: str
) -> None:
    card = await new_card(pool, 10000)
    trip = await board(pool, card, route, 3)
    assert (trip["fare_charged"], trip["is_transfer"], trip["transfer_group_id"]) == (FULL_FARE, False, None)
    assert await fare_type_of(pool, trip["fare_id"]) == fare_type
    assert trip["balance"] == await balance_of(pool, card) == 10000 - FULL_FARE
    stored = await pool.fetchrow("SELECT * FROM trips WHERE trip_id = $1", trip["trip_id"])
    assert (stored["route_id"], stored["boarding_station_id"], stored["fare_charged"]) == (route, 3, FULL_FARE)
    assert await pool.fetchval("SELECT last_used_date FROM cards WHERE card_id = $1", card) == trip["boarding_time"]


async def test_boardings_of_other_routes_within_90_minutes_are_transfers(pool: asyncpg.Pool) -> None:
    card = await new_card(pool, 10000)
    first = await board(pool, card, BUS_ROUTE, 1)
    onto_bus = await board(pool, card, OTHER_BUS_ROUTE, 2)
    onto_cable = await board(pool, card, CABLE_ROUTE, 3)
    charged = [
        (
            trip["fare_charged"],
            await fare_type_of(pool, trip["fare_id"]),
            trip["is_transfer"],
            trip["transfer_group_id"],
        )
        for trip in (first, onto_bus, onto_cable)
    ]
    assert charged == [
        (FULL_FARE, "STANDARD_SITP", False, None),
        (TRANSFER_FARE, "TRANSFER_200_COST", True, first["trip_id"]),
        (0, "TRANSFER_0_COST", True, first["trip_id"]),
    ]
    assert await balance_of(pool, card) == 10000 - FULL_FARE - TRANSFER_FARE


async def test_boarding_the_same_route_again_is_never_a_transfer(pool: asyncpg.Pool) -> None:
    card = await new_card(pool, 10000)
    trips = [await board(pool, card, BUS_ROUTE, station) for station in (1, 2)]
    assert [(trip["fare_charged"], trip["is_transfer"]) for trip in trips] == [(FULL_FARE, False)] * 2


@pytest.mark.parametrize(("minutes_before", "fare_charged"), [(89, TRANSFER_FARE), (91, FULL_FARE)])
async def test_the_transfer_window_is_90_minutes(pool: asyncpg.Pool, minutes_before: int, fare_charged: int) -> None:
    card = await new_card(pool, 10000)
    first = await board(pool, card, BUS_ROUTE)
    await pool.execute(
        "UPDATE trips SET boarding_time = boarding_time - make_interval(mins => $2) WHERE trip_id = $1",
        first["trip_id"],
        minutes_before,
    )
    assert (await board(pool, card, OTHER_BUS_ROUTE, 2))["fare_charged"] == fare_charged


BOARDING_REFUSALS = {
    "retired route": (RETIRED_ROUTE, 1, "active", "TRC03"),
    "unknown route": (UNKNOWN, 1, "active", "TRN04"),
    "unknown station": (BUS_ROUTE, UNKNOWN, "active", "TRN05"),
    "blocked card": (BUS_ROUTE, 1, "blocked", "TRC01"),
}


@pytest.mark.parametrize(
    ("route", "station", "status", "sqlstate"), BOARDING_REFUSALS.values(), ids=BOARDING_REFUSALS.keys()
)
async def test_boarding_refusals_charge_nothing(
    pool: asyncpg.Pool, route: int, station: int, status: str, sqlstate: str
) -> None:
    card = await new_card(pool, 10000)
    await set_card_status(pool, card, status)
    await refusal(sqlstate, board(pool, card, route, station))
    assert (await balance_of(pool, card), await count_of(pool, "trips", card)) == (10000, 0)


async def test_boarding_an_unknown_card_is_refused(pool: asyncpg.Pool) -> None:
    assert (await refusal("TRN01", board(pool, UNKNOWN)))["card_id"] == UNKNOWN


async def test_a_balance_short_of_the_fare_is_refused_and_kept(pool: asyncpg.Pool) -> None:
    card = await new_card(pool, FULL_FARE - 1)
    assert await refusal("TRP01", board(pool, card)) == {
        "balance": FULL_FARE - 1,
        "fare": FULL_FARE,
        "fare_type": "STANDARD_SITP",
    }
    await recharge(pool, card, TRANSFER_FARE)  # a full fare, then 199 left: short of a transfer
    await board(pool, card)
    assert (await refusal("TRP01", board(pool, card, OTHER_BUS_ROUTE)))["fare"] == TRANSFER_FARE
    assert await balance_of(pool, card) == TRANSFER_FARE - 1


# ------------------------------------------------------------------------ end_trip
async def test_end_trip_records_where_and_when_the_rider_alighted(pool: asyncpg.Pool) -> None:
    trip = await board(pool, await new_card(pool, 10000))
    ended = await end_trip(pool, trip["trip_id"], 2)
    assert (ended["trip_id"], ended["disembarking_station_id"]) == (trip["trip_id"], 2)
    assert ended["disembarking_time"] >= ended["boarding_time"] == trip["boarding_time"]
    stored = await pool.fetchrow("SELECT * FROM trips WHERE trip_id = $1", trip["trip_id"])
    assert (stored["disembarking_station_id"], stored["disembarking_time"]) == (2, ended["disembarking_time"])


async def test_ending_a_trip_twice_is_refused(pool: asyncpg.Pool) -> None:
    trip = await board(pool, await new_card(pool, 10000))
    ended = await end_trip(pool, trip["trip_id"], 2)
    assert (await refusal("TRC02", end_trip(pool, trip["trip_id"], 3)))["trip_id"] == trip["trip_id"]
    assert (
        await pool.fetchval("SELECT disembarking_station_id FROM trips WHERE trip_id = $1", trip["trip_id"])
        == ended["disembarking_station_id"]
    )


async def test_ending_an_unknown_trip_or_at_an_unknown_station_is_refused(pool: asyncpg.Pool) -> None:
    trip = await board(pool, await new_card(pool, 10000))
    assert (await refusal("TRN02", end_trip(pool, UNKNOWN)))["trip_id"] == UNKNOWN
    assert (await refusal("TRN05", end_trip(pool, trip["trip_id"], UNKNOWN)))["station_id"] == UNKNOWN
    assert await pool.fetchval("SELECT disembarking_time FROM trips WHERE trip_id = $1", trip["trip_id"]) is None


# ------------------------------------------------------------------------ users and cards
async def test_create_user_then_issue_cards(pool: asyncpg.Pool) -> None:
    user = await create_user(pool, "eva@example.co")
    assert user["email"] == "eva@example.co" and user["registration_date"] is not None
    generated, chosen = await issue_card(pool, user["user_id"]), await issue_card(pool, user["user_id"], "5555666677")
    for card in (generated, chosen):
        assert (card["user_id"], card["balance"], card["status"]) == (user["user_id"], 0, "active")
    assert re.fullmatch(r"[0-9]{8,20}", generated["card_number"]) and chosen["card_number"] == "5555666677"


@pytest.mark.parametrize("email", ["eva@example.co", "Eva@Example.CO"])
async def test_an_email_taken_in_any_case_is_refused(pool: asyncpg.Pool, email: str) -> None:
    await create_user(pool, "eva@example.co")
    with pytest.raises(asyncpg.UniqueViolationError):
        await create_user(pool, email)
    assert await pool.fetchval("SELECT count(*) FROM users") == 1


async def test_issuing_a_card_to_an_unknown_user_is_refused(pool: asyncpg.Pool) -> None:
    assert (await refusal("TRN03", issue_card(pool, UNKNOWN)))["user_id"] == UNKNOWN
    assert await pool.fetchval("SELECT count(*) FROM cards") == 0


async def test_set_card_status_changes_only_what_it_should(pool: asyncpg.Pool) -> None:
    card = await new_card(pool, 1000)
    blocked = await set_card_status(pool, card, "blocked")
    assert (blocked["card_id"], blocked["status"], blocked["balance"]) == (card, "blocked", 1000)
    assert (await set_card_status(pool, card, "active"))["status"] == "active"
    assert (await refusal("TRN01", set_card_status(pool, UNKNOWN, "blocked")))["card_id"] == UNKNOWN
    with pytest.raises(asyncpg.CheckViolationError):
        await set_card_status(pool, card, "stolen")
    assert await pool.fetchval("SELECT status FROM cards WHERE card_id = $1", card) == "active"


async def test_generated_card_numbers_skip_numbers_issued_by_hand(pool: asyncpg.Pool) -> None:
    user_id = (await create_user(pool))["user_id"]
    generated = int((await issue_card(pool, user_id))["card_number"])
    by_hand = [str(generated + step) for step in (1, 2)]  # the sequence's next two, taken by migrated cards
    for number in by_hand:
        await issue_card(pool, user_id, number)
    assert (await issue_card(pool, user_id))["card_number"] not in by_hand


async def test_generated_card_numbers_are_unique_under_concurrency(pool: asyncpg.Pool) -> None:
    user_id = (await create_user(pool))["user_id"]
    async with connections(pool, 40) as conns:
        cards = await asyncio.gather(*(issue_card(conn, user_id) for conn in conns))
    assert len({card["card_number"] for card in cards}) == 40


# ------------------------------------------------------------------------ aggregates and money
STATUSES = ("active", "active", "blocked", "lost", "inactive")  # mostly active, so boardings go on
# Refusals a random workload runs into by design: not-active cards, trips ended twice, short balances.
EXPECTED_REFUSALS = {"TRC01", "TRC02", "TRP01"}


async def test_counters_and_balances_stay_exact_under_concurrent_writes(pool: asyncpg.Pool) -> None:
    users = [(await create_user(pool))["user_id"] for _ in range(8)]
    cards = [await new_card(pool, 30_000) for _ in range(16)]
    trips: list[int] = []

    async def board_one(conn: asyncpg.Connection, rng: random.Random) -> None:
        trips.append((await board(conn, rng.choice(cards), rng.choice((1, 2, 3)), rng.choice(STATIONS)))["trip_id"])

    async def end_one(conn: asyncpg.Connection, rng: random.Random) -> None:
        if trips:
            await end_trip(conn, rng.choice(trips), rng.choice(STATIONS))

    async def recharge_one(conn: asyncpg.Connection, rng: random.Random) -> None:
        await recharge(conn, rng.choice(cards), rng.randint(1, 5000))

    async def issue_one(conn: asyncpg.Connection, rng: random.Random) -> None:
        cards.append((await issue_card(conn, rng.choice(users)))["card_id"])

    async def restatus_one(conn: asyncpg.Connection, rng: random.Random) -> None:
        await set_card_status(conn, rng.choice(cards), rng.choice(STATUSES))

    async def register_one(conn: asyncpg.Connection, rng: random.Random) -> None:
        users.append((await create_user(conn))["user_id"])

    operations: list[Callable[[asyncpg.Connection, random.Random], Awaitable[None]]] = [
        board_one,
        board_one,
        board_one,
        end_one,
        end_one,
        recharge_one,
        recharge_one,
        issue_one,
        restatus_one,
        restatus_one,
        register_one,
    ]

    async def worker(conn: asyncpg.Connection, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(30):
            try:
                await rng.choice(operations)(conn, rng)
            except asyncpg.PostgresError as error:
                if error.sqlstate not in EXPECTED_REFUSALS:
                    raise

    async with connections(pool, 32) as conns:
        await asyncio.gather(*(worker(conn, seed) for seed, conn in enumerate(conns)))

    figures = await pool.fetchrow("""SELECT (SELECT count(*) FROM trips) AS trips,
        (SELECT count(disembarking_time) FROM trips) AS completed,
        (SELECT count(*) FROM cards WHERE status <> 'active') AS not_active""")
    assert min(figures.values()) > 0, dict(figures)  # the workload did exercise every counter
    await assert_counters_exact(pool)
    await assert_balances_reconcile(pool)


# Each rewrites trips the way an operator's correction would; counters must follow each one.
TRIP_REWRITES = (
    "UPDATE trips SET boarding_station_id = 4 WHERE trip_id % 3 = 0",  # to another locality
    "UPDATE trips SET disembarking_station_id = 2, disembarking_time = boarding_time + interval '20 minutes'"
    " WHERE disembarking_time IS NULL AND trip_id % 2 = 0",
    "UPDATE trips SET disembarking_station_id = NULL, disembarking_time = NULL WHERE trip_id % 5 = 0",
    "UPDATE trips SET fare_charged = fare_charged + 50 WHERE is_transfer",
    "UPDATE trips SET route_id = route_id",  # touches every row, changes no figure
    "DELETE FROM trips WHERE trip_id % 4 = 1",
)


async def test_counters_follow_updates_and_deletes_of_trips(pool: asyncpg.Pool) -> None:
    for card in [await new_card(pool, 20_000) for _ in range(6)]:
        for route, station in ((BUS_ROUTE, 1), (OTHER_BUS_ROUTE, 2), (CABLE_ROUTE, 3)):
            trip = await board(pool, card, route, station)
            if route != OTHER_BUS_ROUTE:
                await end_trip(pool, trip["trip_id"])
    for statement in TRIP_REWRITES:
        await pool.execute(statement)
        await assert_counters_exact(pool)
    remaining = [row["trip_id"] for row in await pool.fetch("SELECT trip_id FROM trips ORDER BY trip_id")]
    assert len(remaining) > 8
    async with connections(pool, len(remaining)) as conns:  # one row each, from many connections at once
        await asyncio.gather(
            *(
                conn.execute(
                    "DELETE FROM trips WHERE trip_id = $1"
                    if i % 2
                    else "UPDATE trips SET boarding_station_id = 1 WHERE trip_id = $1",
                    trip_id,
                )
                for i, (conn, trip_id) in enumerate(zip(conns, remaining, strict=False))
            )
        )
    await assert_counters_exact(pool)
    await pool.execute("TRUNCATE trips")
    await assert_counters_exact(pool)
