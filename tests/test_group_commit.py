"""Group commit (issue 12): writes that arrive together share one call of a batch function,
one transaction and one invalidation, and each request still gets the answer it would get alone.

The batch functions are called directly first (what a batch decides, item by item), then the
real server is loaded through HTTP; a spy on its Database records each batch's size, so that
every test shows that it did go through batches of more than one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from tests.support.api import (
    SITP_FARE,
    assert_problem,
    balance_in_db,
    board,
    fetch,
    fetchval,
    json_body,
    make_user_with_card,
    recharge,
    set_status,
)
from tests.support.db import (
    FULL_FARE,
    assert_balances_reconcile,
    assert_counters_exact,
    balance_of,
    connected,
    new_card,
    new_token,
    set_card_status,
)
from tests.support.stack import Api, serve_api
from travel.database import Database
from travel.startup.embedded import EmbeddedStack

pytestmark = pytest.mark.slow  # bursts of hundreds of concurrent writes: seconds

BATCHES = ("recharge-cards", "board-cards", "end-trips")
UNKNOWN = 999_999


# ---------------------------------------------------------------- helpers
@contextlib.contextmanager
def batch_sizes(api: Api) -> Iterator[dict[str, list[int]]]:
    """The number of items of each batch call the server makes, by query: a spy on its Database."""
    database: Database = api.state["db"]
    sizes: dict[str, list[int]] = defaultdict(list)
    real_run = database.run

    async def run(query: Any, *args: Any) -> Any:
        if query.name in BATCHES:
            sizes[query.name].append(len(args[0]))
        return await real_run(query, *args)

    database.run = run  # type: ignore[method-assign]
    try:
        yield sizes
    finally:
        del database.run  # the class's method again


def assert_serial(opening: int, steps: list[tuple[int, int]], final: int) -> None:
    """Each (before, after) balance of a card's accepted writes follows another's after (or
    the opening), and the last ends at `final`: the answers describe one serial history."""
    assert Counter([opening] + [after for _, after in steps]) == Counter([before for before, _ in steps] + [final])


RECHARGE_CARDS = "SELECT * FROM recharge_cards($1, $2, $3, $4, $5)"
BOARD_CARDS = "SELECT * FROM board_cards($1, $2, $3)"
END_TRIPS = "SELECT item, refusal, message, detail, (trip).* FROM end_trips($1, $2)"


# ---------------------------------------------------------------- the batch functions, called directly
async def test_a_recharge_batch_answers_each_item_in_order_and_refusals_abort_nothing(pool: asyncpg.Pool) -> None:
    card, blocked, token = await new_card(pool, 1000), await new_card(pool, 500), await new_token(pool)
    await set_card_status(pool, blocked, "blocked")
    items = [  # card, amount, point, key
        (card, 100, 1, None),
        (UNKNOWN, 100, 1, None),
        (card, 200, 1, "k-1"),
        (blocked, 100, 1, "k-2"),
        (card, 200, 1, "k-1"),
        (card, 999, 1, "k-1"),
        (card, 300, 99, None),
        (card, 400, None, None),
    ]
    rows = await pool.fetch(
        RECHARGE_CARDS,
        [i[0] for i in items],
        [i[1] for i in items],
        [i[2] for i in items],
        [token] * len(items),
        [i[3] for i in items],
    )
    assert [row["item"] for row in rows] == list(range(1, len(items) + 1))
    assert [row["refusal"] for row in rows] == [None, "TRN01", None, "TRC01", None, "TRI01", "TRN06", None]
    # The same card twice applies both, in order; the same key twice is one recharge and one replay.
    assert [rows[i]["balance"] for i in (0, 2, 4, 7)] == [1100, 1300, 1300, 1700]
    assert (rows[2]["replayed"], rows[4]["replayed"]) == (False, True)
    assert rows[4]["recharge_id"] == rows[2]["recharge_id"]
    assert rows[5]["detail"] == f'{{"recharge_id": {rows[2]["recharge_id"]}}}'
    assert (rows[3]["message"], rows[3]["detail"]) == (
        "card is blocked",
        f'{{"card_id": {blocked}, "card_status": "blocked"}}',
    )
    assert (await balance_of(pool, card), await balance_of(pool, blocked)) == (1700, 500)
    assert await pool.fetchval("SELECT count(*) FROM recharges WHERE card_id = $1", card) == 1 + 3
    # The blocked card's key was not spent: once active, the same key recharges.
    await set_card_status(pool, blocked, "active")
    again = await pool.fetch(RECHARGE_CARDS, [blocked], [100], [1], [token], ["k-2"])
    assert (again[0]["refusal"], again[0]["replayed"], again[0]["balance"]) == (None, False, 600)
    await assert_balances_reconcile(pool)


async def test_a_boarding_batch_charges_in_order_and_stops_at_the_balance(pool: asyncpg.Pool) -> None:
    card, other = await new_card(pool, 3 * FULL_FARE), await new_card(pool, 10_000)
    # Three full fares on route 1, a transfer onto route 2, then two more on route 1 (transfers
    # back, at 200, while 200 is left... after which nothing is).
    cards = [card, card, other, card, card, card, card, UNKNOWN]
    routes = [1, 1, 1, 1, 2, 1, 1, 1]
    stations = [1, 2, 3, 4, 1, 2, 3, 1]
    rows = await pool.fetch(BOARD_CARDS, cards, routes, stations)
    assert [row["refusal"] for row in rows] == [None, None, None, None, "TRP01", "TRP01", "TRP01", "TRN01"]
    assert [row["balance"] for row in rows[:4]] == [2 * FULL_FARE, FULL_FARE, 10_000 - FULL_FARE, 0]
    assert rows[4]["detail"] == '{"fare": 200, "balance": 0, "fare_type": "TRANSFER_200_COST"}'
    assert rows[5]["detail"] == f'{{"fare": {FULL_FARE}, "balance": 0, "fare_type": "STANDARD_SITP"}}'
    transfer_card = await new_card(pool, 10_000)
    rows = await pool.fetch(BOARD_CARDS, [transfer_card] * 2, [1, 3], [1, 3])
    assert [(row["fare_charged"], row["is_transfer"]) for row in rows] == [(FULL_FARE, False), (0, True)]
    assert rows[1]["transfer_group_id"] == rows[0]["trip_id"]
    await assert_counters_exact(pool)
    await assert_balances_reconcile(pool)


async def test_an_end_trip_batch_ends_a_trip_once(pool: asyncpg.Pool) -> None:
    card = await new_card(pool, 10_000)
    trips = [row["trip_id"] for row in await pool.fetch(BOARD_CARDS, [card] * 2, [1, 1], [1, 3])]
    rows = await pool.fetch(END_TRIPS, [trips[0], trips[1], trips[0], UNKNOWN, trips[1]], [2, 4, 3, 2, 99])
    assert [row["refusal"] for row in rows] == [None, None, "TRC02", "TRN02", "TRC02"]
    assert [row["disembarking_station_id"] for row in rows] == [2, 4, None, None, None]
    assert rows[2]["message"] == "trip already ended"
    await assert_counters_exact(pool)


async def test_concurrent_batches_on_overlapping_cards_and_localities_never_deadlock(pool: asyncpg.Pool) -> None:
    """Batches that list the same cards and localities in opposite orders, all at once: the
    locks are taken in key order, so none waits on another in a cycle (deadlock_timeout
    lowered, so a cycle would surface as an error at once)."""
    cards = [await new_card(pool, 1_000_000) for _ in range(40)]
    rng = random.Random(12)

    async def batch(conn: asyncpg.Connection) -> None:
        await conn.execute("SET deadlock_timeout = '10ms'")
        for _ in range(15):
            chosen = rng.sample(cards, 3) * 2  # often disjoint: then only the counters are shared
            stations = [rng.choice((1, 2, 3, 4)) for _ in chosen]
            await conn.fetch(BOARD_CARDS, chosen, [1] * len(chosen), stations)
            await conn.fetch(
                RECHARGE_CARDS,
                chosen[::-1],
                [100] * len(chosen),
                [1] * len(chosen),
                [None] * len(chosen),
                [None] * len(chosen),
            )

    async with contextlib.AsyncExitStack() as held:
        conns = [await held.enter_async_context(pool.acquire()) for _ in range(24)]  # pids share counter shards
        await asyncio.gather(*(batch(conn) for conn in conns))  # type: ignore[arg-type]
    await assert_counters_exact(pool)
    await assert_balances_reconcile(pool)


# ---------------------------------------------------------------- money through batches (HTTP)
async def test_64_concurrent_recharges_of_one_card_in_batches_add_every_amount_once(api: Api) -> None:
    _, card = await make_user_with_card(api)
    card_id = card["card_id"]
    with batch_sizes(api) as sizes:
        responses = await asyncio.gather(
            *(recharge(api, card_id, 1000 + n, role=("admin", "recharge_point")[n % 2]) for n in range(64))
        )
    bodies = [json_body(response, 201) for response in responses]
    assert max(sizes["recharge-cards"]) > 1 and sum(sizes["recharge-cards"]) == 64
    total = sum(1000 + n for n in range(64))
    assert len({body["recharge_id"] for body in bodies}) == 64
    assert_serial(0, [(body["balance"] - body["amount"], body["balance"]) for body in bodies], total)
    assert await balance_in_db(api, card_id) == total
    assert json_body(await api.http.get(f"/cards/{card_id}/balance"))["balance"] == total


async def test_40_boardings_in_batches_on_10_fares_board_exactly_10(api: Api) -> None:
    _, card = await make_user_with_card(api, 10 * SITP_FARE)
    card_id = card["card_id"]
    with batch_sizes(api) as sizes:
        responses = await asyncio.gather(*(board(api, card_id, 1, 1 + n % 4) for n in range(40)))
    assert max(sizes["board-cards"]) > 1
    assert Counter(response.status_code for response in responses) == {201: 10, 402: 30}
    boarded = sorted(
        (response.json() for response in responses if response.status_code == 201), key=lambda body: body["trip_id"]
    )
    assert [body["balance"] for body in boarded] == [SITP_FARE * n for n in range(9, -1, -1)]
    for response in responses:
        if response.status_code == 402:
            body = assert_problem(response, 402, "INSUFFICIENT_BALANCE")
            assert (body["balance"], body["fare"], body["fare_type"]) == (0, SITP_FARE, "STANDARD_SITP")
    assert await balance_in_db(api, card_id) == 0
    assert await fetchval(api, "SELECT count(*) FROM trips WHERE card_id = $1", card_id) == 10
    assert json_body(await api.http.get("/trips/total"))["total_trips"] == 10
    assert json_body(await api.http.get("/finance/revenue"))["total_revenue"] == 10 * SITP_FARE
    assert json_body(await api.http.get(f"/cards/{card_id}/balance"))["balance"] == 0


async def test_20_concurrent_replays_in_batches_make_one_recharge(api: Api) -> None:
    _, card = await make_user_with_card(api)
    card_id = card["card_id"]
    with batch_sizes(api) as sizes:
        responses = await asyncio.gather(*(recharge(api, card_id, 2500, key="receipt-7") for _ in range(20)))
    assert max(sizes["recharge-cards"]) > 1
    bodies = [json_body(response, 201) for response in responses]
    assert all(body == bodies[0] for body in bodies) and bodies[0]["balance"] == 2500
    assert sum("idempotent-replayed" not in response.headers for response in responses) == 1
    assert await fetchval(api, "SELECT count(*) FROM recharges WHERE card_id = $1", card_id) == 1
    assert await balance_in_db(api, card_id) == 2500


# ---------------------------------------------------------------- a burst: every answer as if alone
Send = Callable[[], Awaitable[httpx.Response]]


async def test_a_burst_of_200_mixed_writes_answers_each_as_if_alone_and_reconciles(api: Api) -> None:
    """200 writes over 10 cards (and unknown ones) sent at once. A refusal or a replay does not
    depend on the order, so each is compared with the same request sent again, alone, after
    the burst: the same status and the same body. Accepted writes depend on the order: their
    balances must chain into one serial history per card, and every card reconciles."""
    active = [(await make_user_with_card(api, 50_000))[1]["card_id"] for _ in range(6)]
    _, blocked_card = await make_user_with_card(api, 10_000)
    blocked = blocked_card["card_id"]
    await set_status(api, blocked, "blocked")
    short = (await make_user_with_card(api, SITP_FARE - 1))[1]["card_id"]
    keyed = (await make_user_with_card(api, 1000))[1]["card_id"]
    first = json_body(await recharge(api, keyed, 1000, key="receipt-1"), 201)
    rider = (await make_user_with_card(api, 50_000))[1]["card_id"]
    open_trips = [json_body(await board(api, rider, 1, 1 + n % 4), 201)["trip_id"] for n in range(8)]
    openings = {card_id: await balance_in_db(api, card_id) for card_id in [*active, blocked, short, keyed, rider]}

    def post(path: str, body: dict[str, Any], role: str = "admin", key: str | None = None) -> Send:
        headers = api.auth(role) | ({"Idempotency-Key": key} if key else {})
        return lambda: api.http.post(path, headers=headers, json=body)

    def recharging(card_id: int, amount: int, key: str | None = None, point: int | None = None) -> Send:
        body = {"card_id": card_id, "amount": amount} | ({"recharge_point_id": point} if point else {})
        return post("/recharges", body, key=key)

    def boarding(card_id: int, route_id: int = 1, station_id: int = 1) -> Send:
        return post(
            "/trips", {"card_id": card_id, "route_id": route_id, "boarding_station_id": station_id}, "validator"
        )

    def ending(trip_id: int, station_id: int = 2) -> Send:
        return post(f"/trips/{trip_id}/end", {"disembarking_station_id": station_id}, "validator")

    requests: list[Send] = []
    for n, card_id in enumerate(active):  # 6 x 21
        requests += [recharging(card_id, 100 * (k + 1)) for k in range(7)]
        requests += [recharging(card_id, 777, key=f"burst-{n}")] * 4  # one recharge, three replays
        requests += [boarding(card_id, 1, 1 + k % 4) for k in range(7)]  # same route: full fares
        requests += [boarding(card_id, 99), boarding(card_id, 1, 99), recharging(card_id, 500, point=99)]
    requests += [recharging(blocked, 300) for _ in range(4)] + [recharging(blocked, 300, key="blocked-1")] * 2
    requests += [boarding(blocked) for _ in range(4)]  # 10
    requests += [boarding(short, 1, 1 + k % 4) for k in range(8)]  # 8
    requests += [recharging(keyed, 2000, key="receipt-1")] * 4 + [recharging(keyed, 1000, key="receipt-1")] * 4  # 8
    requests += [recharging(UNKNOWN - k, 100, key=f"ghost-{k % 2}") for k in range(8)]
    requests += [boarding(UNKNOWN - k) for k in range(6)]  # 14
    requests += [ending(trip_id) for trip_id in open_trips] * 2 + [ending(UNKNOWN), ending(UNKNOWN - 1)]  # 18
    requests += [recharging(rider, 100 + k) for k in range(16)]  # 16
    assert len(requests) == 200
    order = list(range(len(requests)))
    random.Random(200).shuffle(order)

    with batch_sizes(api) as sizes:
        shuffled = await asyncio.gather(*(requests[i]() for i in order))
    answers = [httpx.Response(0)] * len(requests)
    for i, response in zip(order, shuffled, strict=False):
        answers[i] = response
    assert max(sizes["recharge-cards"]) > 1 and max(sizes["board-cards"]) > 1

    # Refusals and replays: exactly what the same request answers alone, now.
    steps: dict[int, list[tuple[int, int]]] = defaultdict(list)
    first_answers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for send, response in zip(requests, answers, strict=False):
        path = str(response.request.url.path)
        body = response.json()
        if response.status_code >= 400 or "idempotent-replayed" in response.headers:
            alone = await send()
            assert (response.status_code, body) == (alone.status_code, alone.json()), (path, body)
        if response.status_code == 201 and path.endswith("/recharges"):
            if "idempotent-replayed" not in response.headers:
                steps[body["card_id"]].append((body["balance"] - body["amount"], body["balance"]))
            if key := response.request.headers.get("idempotency-key"):
                first_answers[key].append(body)
        elif response.status_code == 201:
            assert (body["fare_charged"], body["is_transfer"]) == (SITP_FARE, False)
            steps[body["card_id"]].append((body["balance"] + body["fare_charged"], body["balance"]))

    # What each kind of request had to get.
    codes = Counter(
        (str(r.request.url.path).rsplit("/", 1)[-1] if r.status_code < 400 else r.json()["code"]) for r in answers
    )
    assert codes == {
        "recharges": 6 * 7 + 6 * 4 + 16 + 4,  # plain, keyed (first and replays), rider's, receipt-1 replays
        "trips": 6 * 7,
        "end": 8,
        "ROUTE_NOT_FOUND": 6,
        "STATION_NOT_FOUND": 6,
        "RECHARGE_POINT_NOT_FOUND": 6,
        "CARD_NOT_ACTIVE": 10,
        "INSUFFICIENT_BALANCE": 8,
        "IDEMPOTENCY_KEY_REUSED": 4,
        "CARD_NOT_FOUND": 14,
        "TRIP_ALREADY_ENDED": 8,
        "TRIP_NOT_FOUND": 2,
    }
    ended = Counter(
        (str(r.request.url.path), r.status_code)
        for r in answers
        if str(r.request.url.path).endswith("/end") and r.status_code in (200, 409)
    )
    assert ended == {(f"/api/v1/trips/{trip_id}/end", status): 1 for trip_id in open_trips for status in (200, 409)}
    for key, bodies in first_answers.items():  # one recharge per key, every send answered with it
        assert len({body["recharge_id"] for body in bodies}) == 1, key
    assert first_answers["receipt-1"][0] == first

    # Every card: a serial history in the answers, the database agrees, and reconciles.
    for card_id, opening in openings.items():
        final = await balance_in_db(api, card_id)
        assert_serial(opening, steps[card_id], final)
        assert json_body(await api.http.get(f"/cards/{card_id}/balance"))["balance"] == final
    assert openings[blocked] == await balance_in_db(api, blocked) and openings[short] == await balance_in_db(api, short)
    async with connected(api.database_url) as conn:
        await assert_balances_reconcile(conn)
        await assert_counters_exact(conn)


# ---------------------------------------------------------------- two instances, faults
@pytest.mark.slow
async def test_two_instances_batching_on_the_same_cards_neither_deadlock_nor_lose_a_peso(
    database_url: str, stack: EmbeddedStack, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Two servers (two pools, two batchers: two workers) write on the same 24 cards for 3 s,
    boarding at stations of four localities: batches of both lock cards and counters in key
    order. A deadlock would fail a batch (and log its rerun) or a single write (a 500)."""
    caplog.set_level(logging.WARNING, logger="travel.groupcommit")
    async with serve_api(database_url, stack.redis.url) as one, serve_api(database_url, stack.redis.url) as two:
        cards = [(await make_user_with_card(one, 1_000_000))[1]["card_id"] for _ in range(24)]
        trips: list[int] = []
        statuses: Counter[int] = Counter()
        batched: list[dict[str, list[int]]] = []
        deadline = time.monotonic() + 3.0

        async def writer(api: Api, seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                choice = rng.random()
                if choice < 0.4:
                    response = await recharge(api, rng.choice(cards), rng.randint(1, 5000))
                elif choice < 0.8 or not trips:
                    response = await board(api, rng.choice(cards), rng.choice((1, 2, 3)), rng.choice((1, 2, 3, 4)))
                    if response.status_code == 201:
                        trips.append(response.json()["trip_id"])
                else:
                    response = await api.http.post(
                        f"/trips/{rng.choice(trips)}/end",
                        headers=api.auth("validator"),
                        json={"disembarking_station_id": rng.choice((1, 2, 3, 4))},
                    )
                statuses[response.status_code] += 1

        with batch_sizes(one) as sizes_one, batch_sizes(two) as sizes_two:
            await asyncio.gather(*(writer((one, two)[n % 2], n) for n in range(32)))
            batched = [sizes_one, sizes_two]
    assert set(statuses) <= {200, 201, 402, 409}, statuses  # 402: a card ran dry; 409: a trip ended twice
    assert statuses[201] > 100
    assert all(max(sizes["board-cards"]) > 1 for sizes in batched)
    assert [record.getMessage() for record in caplog.records if record.name == "travel.groupcommit"] == []
    async with connected(database_url) as conn:
        await assert_balances_reconcile(conn)
        await assert_counters_exact(conn)


async def test_a_batch_that_raises_is_rerun_item_by_item_and_only_the_guilty_write_fails(api: Api) -> None:
    """A trigger (a real one, in this test's database) breaks a constraint for one card: the
    batch holding its recharge aborts as a whole, then each item runs alone."""
    cards = [(await make_user_with_card(api, 1000))[1]["card_id"] for _ in range(5)]
    guilty = cards[2]
    async with connected(api.database_url) as conn:
        await conn.execute(f"""
            CREATE FUNCTION refuse_guilty() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'injected' USING ERRCODE = 'check_violation';
            END $$;
            CREATE TRIGGER refuse_guilty BEFORE UPDATE OF balance ON cards
                FOR EACH ROW WHEN (NEW.card_id = {guilty}) EXECUTE FUNCTION refuse_guilty();""")
    recharges = api.state["recharges"]
    with batch_sizes(api) as sizes:
        outcomes = await asyncio.gather(
            *(recharges.submit(card_id, 500, None, 1, None) for card_id in cards), return_exceptions=True
        )
    assert sizes["recharge-cards"] == [5, 1, 1, 1, 1, 1]  # the batch, then each item alone
    assert isinstance(outcomes[2], asyncpg.CheckViolationError)
    assert [outcome[0].balance for i, outcome in enumerate(outcomes) if i != 2] == [1500] * 4  # type: ignore[index]
    assert [await balance_in_db(api, card_id) for card_id in cards] == [1500, 1500, 1000, 1500, 1500]
    # Over HTTP, the guilty write is a 422 problem, as any broken constraint is.
    assert_problem(await recharge(api, guilty, 500), 422, "VALIDATION_ERROR")
    assert await fetch(api, "SELECT card_id FROM recharges WHERE card_id = $1 AND amount = 500", guilty) == []
