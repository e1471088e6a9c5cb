"""What the service keeps only for a while: idempotency records, pruned at start and then
periodically, in batches that never hold a long lock."""

from __future__ import annotations

import asyncio
import datetime
import logging

from travel.database import QUERIES, Database
from travel.errors import STATEMENT_ERRORS

log = logging.getLogger("travel.retention")

# A retry of a recharge is answered from its first answer for this long (Stripe keeps 24 h).
IDEMPOTENCY_RETENTION = datetime.timedelta(hours=24)
PRUNE_EVERY_SECONDS = 600.0
PRUNE_BATCH = 5000
PRUNE_IDEMPOTENCY_KEYS = QUERIES["prune-idempotency-keys"]


async def prune_idempotency_keys(database: Database) -> None:
    """Forget idempotency records past their retention: at start, then every PRUNE_EVERY_SECONDS."""
    while True:
        try:
            pruned = 0
            while True:
                batch = await database.run(PRUNE_IDEMPOTENCY_KEYS, IDEMPOTENCY_RETENTION, PRUNE_BATCH)
                pruned += batch
                if batch < PRUNE_BATCH:
                    break
            log.info("pruned %d idempotency records", pruned)
        except STATEMENT_ERRORS as error:
            log.warning("idempotency pruning failed: %s", error.__class__.__name__)
        await asyncio.sleep(PRUNE_EVERY_SECONDS)
