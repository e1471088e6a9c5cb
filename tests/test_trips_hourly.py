"""GET /trips/hourly (issue 13): per hour in Bogotá's time, every hour present, exact against a
recount of the trips after concurrent writes, cached per N under one family generation."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
from typing import Any

import pytest

import cachekeys
from tests.support.api import (
    SITP_FARE,
    assert_problem,
    board,
    end_trip,
    execute,
    fetch,
    fetchval,
    get_cached,
    json_body,
    make_user_with_card,
)
from tests.support.stack import Api

pytestmark = pytest.mark.slow  # fills hours of trips through the API: seconds

BOGOTA_OFFSET = "-05:00"  # Bogotá keeps UTC-5 all year
# What the triggers kept, and what the trips say, per Bogotá hour.
_MAINTAINED = """SELECT hour, sum(trips)::bigint, sum(completed_trips)::bigint, sum(revenue)::bigint
                 FROM trip_hour_counters GROUP BY hour
                 HAVING sum(trips) <> 0 OR sum(completed_trips) <> 0 OR sum(revenue) <> 0 ORDER BY hour"""
_RECOUNTED = """SELECT date_trunc('hour', boarding_time AT TIME ZONE 'America/Bogota') AT TIME ZONE 'America/Bogota',
                       count(*), count(disembarking_time), sum(fare_charged)::bigint
                FROM trips GROUP BY 1 ORDER BY 1"""
# A trip boarded at a given time, straight into the table (the triggers count it like any other).
_TRIP_AT = """INSERT INTO trips (card_id, route_id, boarding_station_id, boarding_time, fare_id, fare_charged)
              SELECT $1, 1, 1, $2, fare_id, value FROM fares WHERE fare_type = 'STANDARD_SITP' LIMIT 1"""


async def hourly(api: Api, hours: int | None = None) -> list[dict[str, Any]]:
    params = {} if hours is None else {"hours": hours}
    return json_body(await api.http.get("/trips/hourly", params=params))


def parse(hour: object) -> dt.datetime:
    assert isinstance(hour, str) and hour.endswith(BOGOTA_OFFSET), hour
    return dt.datetime.fromisoformat(hour)


async def test_every_hour_is_present_oldest_first_with_zeros(api: Api) -> None:
    _, card = await make_user_with_card(api, balance=10_000)
    assert (await board(api, card["card_id"])).status_code == 201
    for hours, expected in ((None, 24), (1, 1), (6, 6), (168, 168)):
        answer = await hourly(api, hours)
        assert len(answer) == expected
        starts = [parse(row["hour"]) for row in answer]
        assert all(later - earlier == dt.timedelta(hours=1) for earlier, later in itertools.pairwise(starts))
        assert all(start.minute == start.second == 0 for start in starts)
        assert dt.datetime.now(dt.UTC) - starts[-1] < dt.timedelta(hours=1)  # the current hour last
        assert [row["trips"] for row in answer] == [0] * (expected - 1) + [1]
        assert answer[-1] == {"hour": answer[-1]["hour"], "trips": 1, "completed_trips": 0, "revenue": SITP_FARE}


async def test_hours_split_at_bogota_midnight_not_utc(api: Api) -> None:
    """A trip a second before Bogotá's midnight counts in the 23:00 hour of that day, one at
    midnight in the 00:00 hour (05:00 UTC), whatever the server's time zone."""
    _, card = await make_user_with_card(api)
    midnight = await fetchval(
        api, "SELECT date_trunc('day', now() AT TIME ZONE 'America/Bogota') AT TIME ZONE 'America/Bogota'"
    )
    for at in (midnight - dt.timedelta(seconds=1), midnight, midnight + dt.timedelta(minutes=59, seconds=59)):
        await execute(api, _TRIP_AT, card["card_id"], at)
    answer = {parse(row["hour"]): row["trips"] for row in await hourly(api, 24)}
    local_midnight = [start for start in answer if start.hour == 0]
    assert len(local_midnight) == 1 and local_midnight[0].utcoffset() == dt.timedelta(hours=-5)
    assert answer[local_midnight[0]] == 2
    assert answer[local_midnight[0] - dt.timedelta(hours=1)] == 1
    assert sum(answer.values()) == 3
    assert local_midnight[0].astimezone(dt.UTC).hour == 5


@pytest.mark.parametrize("hours", ["0", "169", "x", "", "-1", "1.5", "+5", "2e1", "１２", "9999999999999999999999"])
async def test_hours_outside_1_to_168_are_refused(api: Api, hours: str) -> None:
    body = assert_problem(await api.http.get("/trips/hourly", params={"hours": hours}), 422, "VALIDATION_ERROR")
    assert body.get("field") == "hours"


async def test_hours_given_twice_is_refused(api: Api) -> None:
    assert_problem(await api.http.get("/trips/hourly?hours=2&hours=3"), 422, "VALIDATION_ERROR")


async def test_exact_against_a_recount_after_concurrent_mixed_writes(api: Api) -> None:
    cards = [card for _, card in await asyncio.gather(*(make_user_with_card(api, balance=30_000) for _ in range(8)))]
    rng = random.Random(13)

    async def rider(card_id: int) -> None:
        for _ in range(5):
            boarded = json_body(
                await board(api, card_id, route_id=rng.choice([1, 2, 3]), station_id=rng.choice([1, 3])), 201
            )
            if rng.random() < 0.6:
                assert (await end_trip(api, boarded["trip_id"])).status_code == 200
            # Transfers, open trips and ends interleave across cards (and connections: shards).
            await api.http.get("/trips/hourly", params={"hours": rng.choice([1, 24])})

    await asyncio.gather(*(rider(card["card_id"]) for card in cards))
    # Trips of other hours too, and a rewrite of one, as an import or a correction would do.
    await execute(api, _TRIP_AT, cards[0]["card_id"], dt.datetime.now(dt.UTC) - dt.timedelta(hours=30))
    await execute(
        api,
        "UPDATE trips SET boarding_time = boarding_time - interval '3 hours'"
        " WHERE trip_id = (SELECT min(trip_id) FROM trips)",
    )

    maintained = [tuple(row) for row in await fetch(api, _MAINTAINED)]
    recounted = [tuple(row) for row in await fetch(api, _RECOUNTED)]
    assert maintained == recounted
    answer = {
        parse(row["hour"]): (row["trips"], row["completed_trips"], row["revenue"]) for row in await hourly(api, 168)
    }
    assert {hour: figures for hour, figures in answer.items() if figures != (0, 0, 0)} == {
        hour: tuple(figures) for hour, *figures in recounted
    }
    assert sum(trips for trips, _, _ in answer.values()) == 8 * 5 + 1
    # refresh_counters() rebuilds them to the same figures.
    await execute(api, "SELECT refresh_counters()")
    assert [tuple(row) for row in await fetch(api, _MAINTAINED)] == recounted


async def test_cached_per_n_and_made_stale_by_a_boarding_and_an_end(api: Api) -> None:
    _, card = await make_user_with_card(api, balance=10_000)
    for hours in (3, 24):
        await get_cached(api, f"/trips/hourly?hours={hours}", "MISS")
        assert (await get_cached(api, f"/trips/hourly?hours={hours}", "HIT"))[-1]["trips"] == 0
    trip = json_body(await board(api, card["card_id"]), 201)
    for hours in (3, 24):
        assert (await get_cached(api, f"/trips/hourly?hours={hours}", "MISS"))[-1]["trips"] == 1
        assert (await get_cached(api, f"/trips/hourly?hours={hours}", "HIT"))[-1]["completed_trips"] == 0
    assert (await end_trip(api, trip["trip_id"])).status_code == 200
    for hours in (3, 24):
        assert (await get_cached(api, f"/trips/hourly?hours={hours}", "MISS"))[-1]["completed_trips"] == 1


async def test_a_trip_makes_the_family_stale_with_one_generation(api: Api) -> None:
    """Every N shares trips:hourly's generation: a boarding writes that one name, not 168."""
    assert cachekeys.generation(cachekeys.trips_hourly(24)) == cachekeys.generation(cachekeys.trips_hourly.family_name)
    assert cachekeys.generation(b"e7:" + cachekeys.trips_hourly(5)) == cachekeys.generation(
        b"e7:" + cachekeys.trips_hourly.family_name
    )
    assert sum(key.startswith(cachekeys.trips_hourly.family_name) for key in cachekeys.after_boarding(1)) == 1
    # A value filled under an older generation is not served, even while it is still in Redis.
    _, card = await make_user_with_card(api, balance=10_000)
    await get_cached(api, "/trips/hourly?hours=2", "MISS")
    redis = api.state["cache"].client
    stored = await redis.get(cachekeys.trips_hourly(2))
    assert (await board(api, card["card_id"])).status_code == 201
    await redis.set(cachekeys.trips_hourly(2), stored)  # as if the DEL had never happened
    assert (await get_cached(api, "/trips/hourly?hours=2", "MISS"))[-1]["trips"] == 1
