"""Faults for real: Redis and PostgreSQL stopped, paused (SIGSTOP), slowed and restarted.

These tests have servers of their own (conftest's `module_stack`), so that what they break
does not reach other tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import Counter

import cachekeys
from tests.support.api import assert_problem, make_user_with_card
from tests.support.db import assert_balances_reconcile, connected, until_a_session_waits_on_a_lock
from tests.support.faultproxy import FaultProxy
from tests.support.polling import eventually_async
from tests.support.stack import Api, prepare_network_database, serve_api, start_stopped_servers, with_database
from travel.observability import metrics
from travel.startup.embedded import EmbeddedStack

REDIS_BOUND = 0.5  # seconds a request may take while Redis is away (100 ms timeouts + PostgreSQL)
DATABASE_BOUND = 2.5  # seconds to a 503 while PostgreSQL is away (2 s command/connect timeout)


@pytest.fixture
async def fault_api(module_stack: EmbeddedStack) -> AsyncIterator[Api]:
    """The API on a fresh database of the fault stack, its Redis emptied; servers restored after."""
    name = f"fault_{time.monotonic_ns()}"
    admin = await asyncpg.connect(module_stack.postgres.url)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    url = with_database(module_stack.postgres.url, name)
    await prepare_network_database(url)
    client = aioredis.Redis.from_url(module_stack.redis.url)
    await client.flushall()
    await client.aclose()
    async with serve_api(url, module_stack.redis.url) as running:
        try:
            yield running
        finally:
            module_stack.redis.resume()
            resume_postgres(module_stack)
            start_stopped_servers(module_stack)


def postgres_pids(stack: EmbeddedStack) -> list[int]:
    """Every process of the stack's PostgreSQL (postmaster and backends)."""
    postmaster = int((stack.postgres.data_dir / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    return [postmaster, *map(int, children)]


def pause_postgres(stack: EmbeddedStack) -> None:
    for pid in postgres_pids(stack):
        os.kill(pid, signal.SIGSTOP)


def resume_postgres(stack: EmbeddedStack) -> None:
    if (stack.postgres.data_dir / "postmaster.pid").exists():
        for pid in postgres_pids(stack):
            os.kill(pid, signal.SIGCONT)


def counted(counter: Counter) -> float:
    """What `counter` has counted so far, over all its labels (read from its public samples)."""
    return sum(sample.value for sample in next(iter(counter.collect())).samples if sample.name.endswith("_total"))


async def timed(request: asyncio.Future[httpx.Response] | object) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await request  # type: ignore[misc]
    return response, time.monotonic() - started


# ---------------------------------------------------------------- Redis
@pytest.mark.parametrize("fault", ["paused", "stopped", "slow"])
async def test_without_redis_reads_and_writes_answer_from_postgresql_in_bounded_time(
    fault_api: Api, module_stack: EmbeddedStack, fault: str
) -> None:
    api = fault_api
    _, card = await make_user_with_card(api, balance=10_000)
    await api.http.get(f"/cards/{card['card_id']}/balance")  # cached before the fault
    redis_errors_before = counted(metrics.REDIS_ERRORS)
    if fault == "paused":
        module_stack.redis.pause()
    elif fault == "stopped":
        module_stack.redis.stop()
    else:  # every command waits 1 s: a server too slow to be worth waiting for
        client = aioredis.Redis.from_url(module_stack.redis.url)
        await client.execute_command("CLIENT", "PAUSE", "1000", "ALL")
        await client.aclose()

    answers = [
        await timed(api.http.get("/health")),
        await timed(
            api.http.post("/recharges", headers=api.auth("admin"), json={"card_id": card["card_id"], "amount": 2000})
        ),
        await timed(
            api.http.post(
                "/trips",
                headers=api.auth("admin"),
                json={"card_id": card["card_id"], "route_id": 1, "boarding_station_id": 1},
            )
        ),
        await timed(api.http.get(f"/cards/{card['card_id']}/balance")),
        await timed(api.http.get("/trips/total")),
    ]
    statuses = [response.status_code for response, _ in answers]
    assert statuses == [200, 201, 201, 200, 200]
    assert answers[0][0].json()["cache"] == "down"
    assert counted(metrics.REDIS_ERRORS) > redis_errors_before
    assert answers[3][0].json()["balance"] == 10_000 + 2000 - 2950
    assert max(elapsed for _, elapsed in answers) < REDIS_BOUND
    print(f"Redis {fault}: slowest answer {max(elapsed for _, elapsed in answers) * 1000:.0f} ms")


async def test_a_write_during_a_redis_partition_leaves_no_stale_value_for_when_it_heals(
    fault_api: Api, module_stack: EmbeddedStack
) -> None:
    """The link to Redis is cut (its packets vanish, so the write's DEL never lands) while
    Redis keeps the balance cached before: after the partition heals, neither this instance
    nor another one ever serves that balance."""
    redis_port = module_stack.redis.port
    async with FaultProxy(redis_port) as link:
        through_link = module_stack.redis.url.replace(f":{redis_port}/", f":{link.port}/")
        async with (
            serve_api(fault_api.database_url, through_link) as api,
            serve_api(fault_api.database_url, through_link) as other,
        ):
            _, card = await make_user_with_card(api, balance=5000)
            path = f"/cards/{card['card_id']}/balance"
            for instance in (api, other):
                await instance.http.get(path)
                assert (await instance.http.get(path)).headers["x-cache"] == "HIT"
            other_cache = other.state["cache"]
            epoch_before = other_cache.epoch

            link.cut = True
            recharge = await api.http.post(
                "/recharges", headers=api.auth("admin"), json={"card_id": card["card_id"], "amount": 700}
            )
            assert recharge.status_code == 201
            # The other instance hears of the new epoch by NOTIFY: wait for it, bounded.
            await eventually_async(
                lambda: other_cache.epoch != epoch_before, 5, "the other instance hears of the new epoch", every=0.01
            )
            link.cut = False

            direct = aioredis.Redis.from_url(module_stack.redis.url)
            assert await direct.get(cachekeys.card_balance(card["card_id"])) is not None  # still in Redis...
            await direct.aclose()
            for instance in (api, other):
                instance.state["cache"]._bypass_until = 0.0  # ask Redis again now, not in 0.5 s
                answer = await instance.http.get(path)
                assert answer.json()["balance"] == 5700, instance.url  # ...and never served


async def test_redis_restarted_empty_is_used_again_at_once(fault_api: Api, module_stack: EmbeddedStack) -> None:
    """The client reconnects within the first command after the restart (its one retry on a
    dropped connection), so no read is bypassed: the first misses the emptied Redis and fills
    it, the second is a hit."""
    api = fault_api
    _, card = await make_user_with_card(api, balance=3000)
    path = f"/cards/{card['card_id']}/balance"
    await api.http.get(path)
    module_stack.redis.stop()
    module_stack.redis.start()  # same port, nothing kept

    first = await api.http.get(path)
    second = await api.http.get(path)
    health = await api.http.get("/health")
    assert (first.status_code, first.headers["x-cache"], first.json()["balance"]) == (200, "MISS", 3000)
    assert (second.headers["x-cache"], second.content) == ("HIT", first.content)
    assert health.json()["cache"] == "ok"


# ---------------------------------------------------------------- PostgreSQL
@pytest.mark.parametrize("fault", ["stopped", "paused"])
async def test_without_postgresql_the_answer_is_a_fast_503_and_the_pool_recovers(
    fault_api: Api, module_stack: EmbeddedStack, fault: str
) -> None:
    api = fault_api
    _, card = await make_user_with_card(api, balance=3000)
    await api.http.get("/trips/total")  # cached: stays readable from Redis
    unavailable_before = counted(metrics.DATABASE_ERRORS)
    (module_stack.postgres.stop if fault == "stopped" else lambda: pause_postgres(module_stack))()

    answers = await asyncio.gather(
        timed(api.http.get("/users/count")),
        timed(api.http.post("/recharges", headers=api.auth("admin"), json={"card_id": card["card_id"], "amount": 500})),
        timed(api.http.get(f"/cards/{card['card_id']}/balance")),
        timed(api.http.get("/health")),
    )
    for response, elapsed in answers:
        assert response.status_code == 503, response.text
        assert elapsed < DATABASE_BOUND
    print(f"PostgreSQL {fault}: slowest 503 after {max(elapsed for _, elapsed in answers) * 1000:.0f} ms")
    *problems, (health, _) = answers
    for response, _ in problems:  # the balance too: it was never cached, so it needs PostgreSQL
        assert_problem(response, 503, "DATABASE_UNAVAILABLE")
        assert response.headers["retry-after"]
    assert health.json() == {"status": "degraded", "database": "down", "cache": "ok"}
    assert counted(metrics.DATABASE_ERRORS) - unavailable_before == len(problems)  # /health is not an error
    cached = await api.http.get("/trips/total")
    assert (cached.status_code, cached.headers["x-cache"]) == (200, "HIT")

    if fault == "stopped":
        module_stack.postgres.start()
    else:
        resume_postgres(module_stack)
    back = time.monotonic()

    async def answered() -> bool:
        return (await api.http.get("/users/count")).status_code == 200

    await eventually_async(answered, 10, "the pool recovers", every=0)
    recovered_after = time.monotonic() - back
    balance = await api.http.get(f"/cards/{card['card_id']}/balance")
    assert balance.json()["balance"] == 3000  # the refused recharge was not applied
    print(f"recovered {recovered_after:.3f} s after PostgreSQL returned ({fault})")


async def test_a_crash_during_writes_loses_no_answered_write_and_applies_no_half(
    fault_api: Api, module_stack: EmbeddedStack
) -> None:
    """PostgreSQL is killed with writes answered and writes inside their transactions: a
    row lock held by another session keeps the latter in flight until the crash."""
    api = fault_api
    _, card = await make_user_with_card(api, balance=0)

    async def recharge(n: int) -> httpx.Response:
        return await api.http.post(
            "/recharges",
            headers={**api.auth("admin"), "Idempotency-Key": f"crash-{n}"},
            json={"card_id": card["card_id"], "amount": 100},
        )

    answered = await asyncio.gather(*(recharge(n) for n in range(10)))
    assert [response.status_code for response in answered] == [201] * 10
    holder = await asyncpg.connect(api.database_url)
    watcher = await asyncpg.connect(api.database_url)
    try:
        await holder.execute("BEGIN")
        await holder.fetchval("SELECT card_id FROM cards WHERE card_id = $1 FOR UPDATE", card["card_id"])
        in_flight = [asyncio.ensure_future(recharge(n)) for n in range(10, 60)]
        await until_a_session_waits_on_a_lock(watcher, "a write waits on the card's lock", within=5)
        module_stack.postgres.kill()
        unanswered = await asyncio.gather(*in_flight)
    finally:
        holder.terminate()
        watcher.terminate()
    module_stack.postgres.start()

    assert {response.status_code for response in unanswered} == {503}
    async with connected(api.database_url) as conn:
        stored = {
            row["recharge_id"]
            for row in await conn.fetch("SELECT recharge_id FROM recharges WHERE card_id = $1", card["card_id"])
        }
        balance = await conn.fetchval("SELECT balance FROM cards WHERE card_id = $1", card["card_id"])
        await assert_balances_reconcile(conn)
    assert stored == {response.json()["recharge_id"] for response in answered}  # all answered, none in flight
    assert balance == 100 * len(stored)  # every stored recharge moved the balance, none half


# ---------------------------------------------------------------- overload
async def test_past_the_waiting_bound_requests_get_a_fast_503_with_retry_after(
    module_stack: EmbeddedStack, fault_api: Api
) -> None:
    async with serve_api(fault_api.database_url, module_stack.redis.url, pool_min=1, pool_max=2, max_waiting=3) as api:
        await api.http.get("/users/count")
        pause_postgres(module_stack)  # every database call now waits out its timeout
        answers = await asyncio.gather(*(timed(api.http.get("/users/count")) for _ in range(20)))
        resume_postgres(module_stack)

    overloaded = [
        (response, elapsed)
        for response, elapsed in answers
        if response.status_code == 503 and response.json()["code"] == "OVERLOADED"
    ]
    assert len(overloaded) == 20 - 5  # pool_max + max_waiting got in, the rest were refused
    assert all(response.headers["retry-after"] == "1" for response, _ in overloaded)
    assert max(elapsed for _, elapsed in overloaded) < 0.5


async def test_a_crash_under_batched_writes_loses_no_answered_write_and_applies_no_half_batch(
    fault_api: Api, module_stack: EmbeddedStack
) -> None:
    """Recharges (each with its own key) and boardings on 6 cards, sent at once through group
    commit; PostgreSQL is killed once some batches have committed. Every 201 is stored, and
    each batch is all or nothing: of the keyed recharges one batch call carried, either all
    were stored or none."""
    api = fault_api
    cards = [(await make_user_with_card(api, balance=100_000))[1]["card_id"] for _ in range(6)]
    database = api.state["db"]
    real_run = database.run
    batches: list[list[str]] = []  # the keys each recharge batch carried
    committed = asyncio.Event()

    async def run(query: Any, *args: Any) -> Any:
        if query.name == "recharge-cards":
            batches.append(list(args[4]))
        answer = await real_run(query, *args)
        if len(batches) >= 3:
            committed.set()
        return answer

    database.run = run

    async def recharge(n: int) -> httpx.Response:
        return await api.http.post(
            "/recharges",
            headers={**api.auth("admin"), "Idempotency-Key": f"batch-{n}"},
            json={"card_id": cards[n % 6], "amount": 100 + n},
        )

    async def board(n: int) -> httpx.Response:
        return await api.http.post(
            "/trips",
            headers=api.auth("validator"),
            json={"card_id": cards[n % 6], "route_id": 1, "boarding_station_id": 1 + n % 4},
        )

    writes = [asyncio.ensure_future((recharge if n % 3 else board)(n)) for n in range(300)]
    await committed.wait()
    module_stack.postgres.kill()
    answers = await asyncio.gather(*writes)
    module_stack.postgres.start()
    del database.run

    assert {response.status_code for response in answers} <= {201, 503}
    answered = [response.json() for response in answers if response.status_code == 201]
    assert answered and len(answered) < len(answers)  # the crash fell in the middle of the load
    assert max(len(keys) for keys in batches) > 1
    conn = await asyncpg.connect(api.database_url)
    try:
        stored_keys = {
            row["idempotency_key"] for row in await conn.fetch("SELECT idempotency_key FROM idempotency_keys")
        }
        recharges = {row["recharge_id"] for row in await conn.fetch("SELECT recharge_id FROM recharges")}
        trips = {row["trip_id"] for row in await conn.fetch("SELECT trip_id FROM trips")}
        await assert_balances_reconcile(conn)
    finally:
        await conn.close()
    assert {body["recharge_id"] for body in answered if "recharge_id" in body} <= recharges
    assert {body["trip_id"] for body in answered if "trip_id" in body} <= trips
    for keys in batches:
        assert {key in stored_keys for key in keys} in ({True}, {False}), keys
