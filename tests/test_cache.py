"""The cache-aside protocol of docs/design.md: cache-aside, against the real server, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import pytest
import redis.asyncio as aioredis

import cachekeys
from tests.support.api import make_user_with_card
from tests.support.stack import Api
from travel.cache import Cache, Lookup

T = TypeVar("T")

pytestmark = pytest.mark.asyncio


async def command_calls(client: aioredis.Redis) -> dict[str, int]:
    """Calls per Redis command so far (INFO commandstats), without INFO itself."""
    stats = await client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items() if name not in ("cmdstat_info",)
    }


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: calls - before.get(name, 0) for name, calls in after.items() if calls != before.get(name, 0)}


async def measured(
    redis_client: aioredis.Redis, database_calls: list[str], action: Callable[[], Awaitable[T]]
) -> tuple[T, dict[str, int]]:
    """What `action` answers and the Redis commands it cost; `database_calls` then holds the
    queries it ran, and only them."""
    database_calls.clear()
    before = await command_calls(redis_client)
    answer = await action()
    return answer, delta(before, await command_calls(redis_client))


async def funded_card(api: Api, balance: int) -> int:
    """A new user's card with `balance` pesos, made through the API; its id."""
    _, card = await make_user_with_card(api, balance)
    return int(card["card_id"])


async def test_a_hit_is_one_redis_round_trip_and_no_database_query(
    api: Api, redis_client: aioredis.Redis, database_calls: list[str]
) -> None:
    card_id = await funded_card(api, 5000)
    await api.http.get("/trips/total")  # loads the fill script, so the counts below are the steady state
    miss = await api.http.get(f"/cards/{card_id}/balance")
    assert miss.headers["x-cache"] == "MISS"

    hit, redis_calls = await measured(redis_client, database_calls, lambda: api.http.get(f"/cards/{card_id}/balance"))

    assert hit.headers["x-cache"] == "HIT"
    assert hit.content == miss.content
    assert redis_calls == {"mget": 1}
    assert database_calls == []


async def test_a_miss_is_one_redis_read_one_query_and_one_fill(
    api: Api, redis_client: aioredis.Redis, database_calls: list[str]
) -> None:
    await api.http.get("/trips/total")  # loads the fill script
    miss, redis_calls = await measured(redis_client, database_calls, lambda: api.http.get("/finance/revenue"))

    assert miss.headers["x-cache"] == "MISS"
    assert miss.json() == {"total_revenue": 0, "currency": "COP"}
    # Two round trips (MGET, EVALSHA); the script's GET and SET run inside Redis.
    assert redis_calls == {"mget": 1, "evalsha": 1, "get": 1, "set": 1}
    assert database_calls == ["revenue-total"]
    assert await redis_client.ttl(cachekeys.revenue_total()) == pytest.approx(cachekeys.revenue_total.ttl, abs=2)


async def test_a_write_is_one_function_call_and_one_invalidation_round_trip(
    api: Api, redis_client: aioredis.Redis, database_calls: list[str]
) -> None:
    card_id = await funded_card(api, 5000)
    # funded_card's writes left the admin token in the server's token cache: no lookup below.
    answer, redis_calls = await measured(
        redis_client,
        database_calls,
        lambda: api.http.post("/recharges", headers=api.auth("admin"), json={"card_id": card_id, "amount": 100}),
    )

    assert answer.status_code == 201
    assert database_calls == ["recharge-cards"]
    keys = cachekeys.after_recharge(card_id, 1)
    # One round trip (EVALSHA); inside it, one INCR of the generation sequence, then SET per
    # generation and DEL per key.
    assert redis_calls == {"evalsha": 1, "incr": 1, "set": len(keys), "del": len(keys)}


async def test_lookups_of_one_loop_tick_share_one_mget(redis_client: aioredis.Redis) -> None:
    cache = Cache(redis_client)
    await redis_client.set(cachekeys.card_balance(1), b'{"balance":1}')
    before = await command_calls(redis_client)
    lookups = await asyncio.gather(
        *(cache.lookup(cachekeys.card_balance(n)) for n in range(1, 51)), cache.lookup(cachekeys.card_balance(1))
    )
    after = await command_calls(redis_client)

    assert delta(before, after) == {"mget": 1}
    assert lookups[0].value == b'{"balance":1}'
    assert lookups[-1] is lookups[0]  # the same key asked twice: one answer
    assert all(lookup.value is None for lookup in lookups[1:-1])


async def test_a_slow_miss_cannot_put_back_what_it_read_before_a_write(
    api: Api, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/design.md: cache-aside's race: a miss reads the old row, a write commits and DELs, then the miss
    fills. The miss is paused between its read and its fill, so the order is certain."""
    card_id = await funded_card(api, 5000)
    key = cachekeys.card_balance(card_id)
    miss_has_read = asyncio.Event()
    write_is_done = asyncio.Event()
    real_fill = Cache.fill

    async def fill_after_the_write(self: Cache, lookup: Lookup, *args: Any) -> None:
        if lookup.names[0] == key and not write_is_done.is_set():
            miss_has_read.set()
            await write_is_done.wait()
        await real_fill(self, lookup, *args)

    monkeypatch.setattr(Cache, "fill", fill_after_the_write)
    slow_read = asyncio.create_task(api.http.get(f"/cards/{card_id}/balance"))
    await miss_has_read.wait()
    recharge = await api.http.post("/recharges", headers=api.auth("admin"), json={"card_id": card_id, "amount": 1000})
    assert recharge.status_code == 201
    write_is_done.set()
    stale = await slow_read

    assert stale.json()["balance"] == 5000  # it did read before the write...
    assert await redis_client.get(key) is None  # ...and its fill was refused
    fresh = await api.http.get(f"/cards/{card_id}/balance")
    assert (fresh.headers["x-cache"], fresh.json()["balance"]) == ("MISS", 6000)


async def test_without_the_generation_guard_the_race_leaves_a_stale_value(redis_client: aioredis.Redis) -> None:
    """The race's interleaving (a read, a write, then the read's fill) with a fill that skips
    the guard, a plain SET as unguarded cache-aside does, leaves the value read before the
    write to be served. The guarded fill of the same interleaving is refused, and a fill of
    a read after the write is kept: the guard is what closes the race, and all it refuses."""
    cache = Cache(redis_client)
    key = cachekeys.card_balance(7)

    before_write = await cache.lookup(key)
    await cache.invalidate([key])  # the write
    await redis_client.set(before_write.names[0], b"old", ex=60)  # the fill, unguarded
    assert (await cache.lookup(key)).value == b"old"  # stale: the race happened

    await cache.invalidate([key])  # a second write clears it
    before_write = await cache.lookup(key)
    await cache.invalidate([key])
    await cache.fill(before_write, 60, b"old")  # the same fill, guarded
    assert (await cache.lookup(key)).value is None

    after_write = await cache.lookup(key)
    await cache.fill(after_write, 60, b"new")
    assert (await cache.lookup(key)).value == b"new"


async def test_a_fill_begun_before_an_epoch_bump_lands_in_the_old_epoch(redis_client: aioredis.Redis) -> None:
    """A miss that read before a write whose invalidation failed (the epoch moved on) must
    not store what it read under the new epoch's names: it lands under the old ones, which
    are never read again."""
    cache = Cache(redis_client)
    key = cachekeys.card_balance(8)
    before_bump = await cache.lookup(key)
    cache.epoch = 1  # what invalidated() does when Redis did not take the DEL
    await cache.fill(before_bump, 60, b"old")

    assert await redis_client.get(cachekeys.in_epoch(0, key)) == b"old"
    assert await redis_client.get(cachekeys.in_epoch(1, key)) is None
    assert (await cache.lookup(key)).value is None


@pytest.fixture
async def api_without_redis(api: Api, stack: Any) -> AsyncIterator[Api]:
    """The API whose Redis stops answering (SIGSTOP: a hung host, the worst case)."""
    stack.redis.pause()
    try:
        yield api
    finally:
        stack.redis.resume()


async def test_redis_down_reads_and_writes_go_on_from_postgresql(api_without_redis: Api) -> None:
    api = api_without_redis
    started = time.monotonic()
    health = await api.http.get("/health")
    assert (health.status_code, health.json()) == (200, {"status": "degraded", "database": "ok", "cache": "down"})
    user = await api.http.post(
        "/users",
        headers=api.auth("admin"),
        json={"first_name": "Luis", "last_name": "Pérez", "email": "luis@example.co", "id_number": "80123456"},
    )
    card = await api.http.post("/cards", headers=api.auth("admin"), json={"user_id": user.json()["user_id"]})
    card_id = card.json()["card_id"]
    recharge = await api.http.post("/recharges", headers=api.auth("admin"), json={"card_id": card_id, "amount": 3000})
    balance = await api.http.get(f"/cards/{card_id}/balance")
    elapsed = time.monotonic() - started

    assert recharge.status_code == 201
    assert (balance.status_code, balance.headers["x-cache"], balance.json()["balance"]) == (200, "MISS", 3000)
    assert elapsed < 3.0  # six requests, each bounded by the 100 ms Redis timeouts


# ---------------------------------------------------------------- single flight
async def test_concurrent_misses_of_a_key_share_one_query_and_one_fill(
    api: Api, redis_client: aioredis.Redis, database_calls: list[str]
) -> None:
    await api.http.get("/finance/revenue")  # loads the fill script
    answers, redis_calls = await measured(
        redis_client, database_calls, lambda: asyncio.gather(*(api.http.get("/trips/total") for _ in range(50)))
    )

    assert {answer.status_code for answer in answers} == {200}
    assert len({answer.content for answer in answers}) == 1
    assert database_calls == ["trips-total"]
    assert redis_calls.get("evalsha") == 1  # one fill
    assert await redis_client.get(cachekeys.trips_total()) == answers[0].content


async def test_a_failed_load_fails_each_waiter_with_its_error_and_the_next_miss_loads_again(
    redis_client: aioredis.Redis, pool: Any
) -> None:
    cache = Cache(redis_client)
    loads: list[str] = []

    async def load(sql: str) -> bytes:
        loads.append(sql)
        async with pool.acquire() as conn:
            return str(await conn.fetchval(sql)).encode()

    lookups = [await cache.lookup(b"routes:all") for _ in range(20)]  # twenty misses, each its own read
    failed = await asyncio.gather(
        *(cache.load(lookup, 60, lambda: load("SELECT 1 / 0")) for lookup in lookups), return_exceptions=True
    )
    assert loads == ["SELECT 1 / 0"]
    assert all(isinstance(error, asyncpg.DivisionByZeroError) and error is failed[0] for error in failed)
    assert await redis_client.get(b"routes:all") is None

    retry = await cache.lookup(b"routes:all")
    assert await cache.load(retry, 60, lambda: load("SELECT 7")) == b"7"
    assert loads == ["SELECT 1 / 0", "SELECT 7"]
    assert await redis_client.get(b"routes:all") == b"7"


async def test_a_miss_after_a_write_does_not_join_a_load_begun_before_it(redis_client: aioredis.Redis) -> None:
    """A load that began before a write may have read the old row: a miss that saw the
    write's new generation loads for itself."""
    cache = Cache(redis_client)
    before_write = await cache.lookup(b"card:9:balance")
    release = asyncio.Event()

    async def old_row() -> bytes:
        await release.wait()
        return b"old"

    async def new_row() -> bytes:
        return b"new"

    slow = asyncio.ensure_future(cache.load(before_write, 60, old_row))
    await cache.invalidate([b"card:9:balance"])
    after_write = await cache.lookup(b"card:9:balance")
    assert await cache.load(after_write, 60, new_row) == b"new"
    release.set()
    assert await slow == b"old"
    assert await redis_client.get(b"card:9:balance") == b"new"


async def test_a_waiter_going_away_does_not_cancel_the_load_for_the_others(redis_client: aioredis.Redis) -> None:
    cache = Cache(redis_client)
    loading, release = asyncio.Event(), asyncio.Event()

    async def row() -> bytes:
        loading.set()
        await release.wait()
        return b"row"

    first = asyncio.ensure_future(cache.load(await cache.lookup(b"stations:all"), 60, row))
    second = asyncio.ensure_future(cache.load(await cache.lookup(b"stations:all"), 60, row))
    await loading.wait()  # the load starts after both have asked for it
    first.cancel()
    release.set()
    assert await second == b"row"
    assert first.cancelled()
