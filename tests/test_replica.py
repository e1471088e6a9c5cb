"""A real PostgreSQL streaming replica behind READ_DATABASE_URL (docs/design.md: shape, issue 6).

The test builds its own primary (not the session's server), clones it with
`pg_basebackup -R -X stream`, starts the clone as a hot standby on another port and runs the
API with `read_database_url` pointing at it. With the replica's replay paused, it shows
which reads go where: writes and balance reads see the primary at once, aggregates and
counts answer from the (now lagging) replica, and catch up once replay resumes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.support.api import board, end_trip, get_cached, json_body, make_user, make_user_with_card, recharge
from tests.support.db import connected
from tests.support.polling import eventually_async
from tests.support.stack import Api, prepare_network_database, serve_api
from travel.startup.embedded import EmbeddedStack, LocalPostgres

CATCH_UP_SECONDS = 20.0


@dataclass
class Replica(LocalPostgres):
    """A hot standby made from `primary` by pg_basebackup; `start()` runs it on its own port."""

    def clone(self, primary: LocalPostgres) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(primary.password_file, self.password_file)
        self._as.hand_over(self.data_dir.parent)
        password = primary.password_file.read_text().strip()
        # -R: standby.signal + primary_conninfo; -X stream: the WAL written during the copy too.
        self._pg(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            "travel",
            "-D",
            str(self.data_dir),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
            env={**os.environ, "PGPASSWORD": password},
        )
        (self.data_dir / "run").mkdir(exist_ok=True)  # not copied when empty on some versions
        self._as.hand_over(self.data_dir / "run")


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalPostgres, Replica]]:
    """A private primary and its streaming replica; both stopped at the end."""
    root = tmp_path_factory.mktemp("replication")
    primary = LocalPostgres(root / "primary" / "data", durable=False)
    replica = Replica(root / "replica" / "data", durable=False)
    primary.start()
    try:
        asyncio.run(prepare_network_database(primary.url))
        replica.clone(primary)
        replica.start()
        try:
            yield primary, replica
        finally:
            replica.stop()
    finally:
        primary.stop()


async def wait_for_replay(primary_url: str, replica_url: str) -> None:
    """Until the replica has replayed everything the primary has written (bounded)."""
    async with connected(primary_url) as primary, connected(replica_url) as replica:
        target = await primary.fetchval("SELECT pg_current_wal_lsn()")
        await eventually_async(
            lambda: replica.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", target),
            CATCH_UP_SECONDS,
            f"the replica replays up to {target}",
            every=0.02,
        )


async def count_users(api: Api) -> int:
    return json_body(await api.http.get("/users/count"))["count"]


async def test_replica_is_a_streaming_hot_standby(replicated: tuple[LocalPostgres, Replica]) -> None:
    primary, replica = replicated
    async with connected(replica.url) as conn:
        assert await conn.fetchval("SELECT pg_is_in_recovery()")
        assert await conn.fetchval("SELECT status FROM pg_stat_wal_receiver") == "streaming"
        # Read-only: a write there fails, so the API can never write to it by mistake.
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("CREATE TABLE nothing (x int)")
    async with connected(primary.url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == 1


async def test_lagging_reads_go_to_the_replica_and_the_rest_to_the_primary(
    replicated: tuple[LocalPostgres, Replica], stack: EmbeddedStack, redis_client: aioredis.Redis
) -> None:
    primary, replica = replicated
    async with serve_api(primary.url, stack.redis.url, read_database_url=replica.url) as api:
        _, card = await make_user_with_card(api, balance=10_000)
        await wait_for_replay(primary.url, replica.url)
        users_before = await count_users(api)
        totals_before = await get_cached(api, "/trips/total", "MISS")

        async with connected(replica.url) as control:
            await control.execute("SELECT pg_wal_replay_pause()")
            try:
                # Writes and the reads that must see them: on the primary, exact at once.
                answer = json_body(await recharge(api, card["card_id"], 5_000), 201)
                assert answer["balance"] == 15_000
                balance = json_body(await api.http.get(f"/cards/{card['card_id']}/balance"))
                assert balance["balance"] == 15_000
                trip = json_body(await board(api, card["card_id"]), 201)
                assert json_body(await end_trip(api, trip["trip_id"]))["trip_id"] == trip["trip_id"]
                await make_user(api)
                balance = json_body(await api.http.get(f"/cards/{card['card_id']}/balance"))
                assert balance["balance"] == 15_000 - trip["fare_charged"]

                # Counts and aggregates: from the replica, which has not replayed them yet.
                assert await count_users(api) == users_before
                async with connected(primary.url) as conn:
                    assert await conn.fetchval("SELECT sum(users) FROM user_counters") == users_before + 1
                # The trip invalidated trips:total; the refill reads the paused replica, so the
                # stale total goes into the cache (staleness = replication lag + the TTL).
                stale = await get_cached(api, "/trips/total", "MISS")
                assert stale == totals_before
            finally:
                await control.execute("SELECT pg_wal_replay_resume()")

        await wait_for_replay(primary.url, replica.url)
        assert await count_users(api) == users_before + 1
        assert await get_cached(api, "/trips/total", "HIT") == totals_before  # until the TTL ...
        await redis_client.flushdb()  # ... runs out (here: at once)
        fresh = await get_cached(api, "/trips/total", "MISS")
        assert fresh["total_trips"] == totals_before["total_trips"] + 1
        assert fresh["completed_trips"] == totals_before["completed_trips"] + 1


async def test_without_a_read_url_everything_reads_the_primary(
    replicated: tuple[LocalPostgres, Replica], stack: EmbeddedStack, redis_client: aioredis.Redis
) -> None:
    primary, replica = replicated
    async with serve_api(primary.url, stack.redis.url) as api:
        before = await count_users(api)
        async with connected(replica.url) as control:
            await control.execute("SELECT pg_wal_replay_pause()")
            try:
                await make_user(api)
                assert await count_users(api) == before + 1
            finally:
                await control.execute("SELECT pg_wal_replay_resume()")
    await wait_for_replay(primary.url, replica.url)
