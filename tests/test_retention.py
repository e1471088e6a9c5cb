"""Idempotency records are kept for IDEMPOTENCY_RETENTION, then pruned."""

from __future__ import annotations

import datetime

import asyncpg
import redis.asyncio as aioredis

from tests.support.polling import eventually_async
from tests.support.stack import register_test_tokens, serve_api
from travel.retention import IDEMPOTENCY_RETENTION
from travel.startup.embedded import EmbeddedStack


async def test_records_past_retention_are_pruned_and_younger_ones_kept(
    database_url: str, stack: EmbeddedStack, redis_client: aioredis.Redis
) -> None:
    await register_test_tokens(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        token_id = await conn.fetchval("SELECT token_id FROM write_tokens WHERE role = 'admin'")
        user = await conn.fetchval(
            "SELECT user_id FROM create_user('Rosa', 'Vega', 'rosa@example.co', "
            "'4012345', NULL, NULL, NULL, NULL, NULL)"
        )
        card = await conn.fetchval("SELECT card_id FROM issue_card($1, NULL)", user)
        for key in ("expired", "young"):
            await conn.execute("SELECT recharge_card($1, 1000, NULL, $2, $3)", card, token_id, key)
        age = IDEMPOTENCY_RETENTION + datetime.timedelta(minutes=1)
        await conn.execute(
            "UPDATE idempotency_keys SET created_at = now() - $1::interval WHERE idempotency_key = 'expired'", age
        )

        async with serve_api(database_url, stack.redis.url):  # prunes at start

            async def pruned() -> bool:
                return not await conn.fetchval(
                    "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = 'expired'"
                )

            await eventually_async(pruned, 10, "the expired key pruned", every=0.01)
            kept = await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE idempotency_key = 'young'")
        recharges = await conn.fetchval("SELECT count(*) FROM recharges WHERE card_id = $1", card)
    finally:
        await conn.close()
    assert kept == 1
    assert recharges == 2  # pruning forgets keys, never money
