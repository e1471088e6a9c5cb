"""The test session's private servers are real and each test's database is its own."""

import asyncpg


async def test_each_test_gets_a_fresh_database(pool: asyncpg.Pool) -> None:
    assert await pool.fetchval("SELECT count(*) FROM users") == 0
    assert await pool.fetchval("SELECT count(*) FROM fares") == 4
    await pool.execute(
        "INSERT INTO users (first_name, last_name, email, id_number) VALUES ('A', 'B', 'a@b.co', '10001')"
    )


async def test_the_previous_test_left_nothing_behind(pool: asyncpg.Pool) -> None:
    assert await pool.fetchval("SELECT count(*) FROM users") == 0


async def test_redis_is_private_and_empty(redis_client) -> None:
    assert await redis_client.dbsize() == 0
    info = await redis_client.info("server")
    assert info["tcp_port"] != 6379
