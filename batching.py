"""Group commit: writes of one kind that arrive together share one call, one commit, one
invalidation (docs/design.md: writes, performance).

The writes of one kind submitted during one event-loop tick go to PostgreSQL as ONE call of a
batch function of sql/functions.sql (recharge_cards, board_cards, end_trips), one array per
parameter: one round trip, one transaction, one commit for them all. A lone write is a batch
of one, sent on the next tick: no timer, no added wait. While `max_in_flight` batches of a
kind are running, new writes gather for the next one (up to `max_batch`), so batches grow
with the load, as PostgreSQL's own group commit of WAL flushes does.

A batch is invisible to each client. The function answers one row per item, its result or
its refusal (a SQLSTATE of errors.SQLSTATE_PROBLEMS), decided without raising, so a refused
item never aborts the others. An error the call raises aborts the whole batch: its items run
again one by one, and only the guilty one fails. A connection lost mid-call is not retried
(the batch may have committed, as a single write might have): each item gets that error, a
503. The keys that the batch's writes made stale go to Redis in one invalidation, after the
commit; only then are the answers released. The batch runs in a task of its own: a client
that goes away cancels its own wait, never the batch of the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeAlias

import asyncpg

import cachekeys
from db import QUERIES, Database, Overloaded, Query
from errors import DATABASE_UNAVAILABLE_ERRORS, refusal

log = logging.getLogger("travel.batching")

MAX_BATCH = 64  # items per call: a bound on one transaction's length and locks
MAX_IN_FLIGHT = 2  # batches of one kind running at once; past it, writes gather for the next
# Every batch function's rows start with these; the result columns follow.
RESULT_START = 4  # item, refusal, message, detail

Item = tuple[Any, ...]  # one value per parameter of the batch function
Result = tuple[Any, ...]  # the result columns of an item's row
StaleKeys = Callable[[asyncpg.Record], Iterable[bytes]]
Invalidate = Callable[[Sequence[bytes]], Awaitable[None]]
# Refused outright: the batch never ran (or may have committed, unknown): never retried.
UNANSWERED: tuple[type[BaseException], ...] = (Overloaded, *DATABASE_UNAVAILABLE_ERRORS)
Outcome: TypeAlias = "asyncpg.Record | BaseException"


class WriteBatcher:
    """Sends the writes submitted together as one call of `query`, a batch function."""

    def __init__(
        self,
        database: Database,
        query: Query,
        stale_keys: StaleKeys,
        invalidate: Invalidate,
        *,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.database = database
        self.query = query
        self.stale_keys = stale_keys
        self.invalidate = invalidate
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._flush_scheduled = False
        self._batches: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def submit(self, *item: Any) -> Result:
        """Write `item` in the next batch. Returns its result columns once the batch has
        committed and invalidated; raises its refusal as a Problem, or the error that failed it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self.max_batch:
            self._send()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending and len(self._batches) < self.max_in_flight:
            self._send()

    def _send(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._batches.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._flush()  # what gathered while the batches were full

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        outcomes: list[Outcome] = []
        try:
            outcomes = await self._call([item for item, _ in batch])
            stale = dict.fromkeys(
                key for outcome in outcomes if isinstance(outcome, asyncpg.Record) for key in self.stale_keys(outcome)
            )
            if stale:
                await self.invalidate(list(stale))
        finally:  # committed and invalidated (or failed): now, and only now, the answers
            for index, (_, future) in enumerate(batch):
                if future.done():  # its client went away
                    continue
                if index >= len(outcomes):  # the batch itself was cancelled (shutdown)
                    future.cancel()
                elif isinstance(outcome := outcomes[index], BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(tuple(outcome)[RESULT_START:])

    async def _call(self, items: list[Item]) -> list[Outcome]:
        """Each item's row, or the exception that refused or failed it."""
        try:
            rows = await self.database.run(self.query, *columns(items))
        except UNANSWERED as error:
            return [error] * len(items)
        except Exception as error:
            if len(items) == 1:
                return [error]
            log.warning(
                "a batch of %d writes failed (%s); running them one by one", len(items), error.__class__.__name__
            )
            return [(await self._call([item]))[0] for item in items]
        by_item = {row["item"]: row for row in rows}
        return [answer(by_item[number]) for number in range(1, len(items) + 1)]


def answer(row: asyncpg.Record) -> Outcome:
    """An item's row, or its refusal as the Problem that a single write would have raised."""
    sqlstate = row["refusal"]
    return row if sqlstate is None else refusal(sqlstate, row["message"], row["detail"])


def columns(items: list[Item]) -> list[list[Any]]:
    """Items (rows of values) as the batch function's arrays (one per parameter)."""
    return [list(column) for column in zip(*items, strict=True)]


def write_batchers(database: Database, invalidate: Invalidate) -> dict[str, WriteBatcher]:
    """The API's batched writes, by the name the handlers find them under in the app state."""
    return {
        "recharges": WriteBatcher(
            database,
            QUERIES["recharge-cards"],
            invalidate=invalidate,
            stale_keys=lambda row: cachekeys.after_recharge(row["card_id"], row["user_id"]),
        ),
        "boardings": WriteBatcher(
            database,
            QUERIES["board-cards"],
            invalidate=invalidate,
            stale_keys=lambda row: cachekeys.after_boarding(row["card_id"]),
        ),
        "trip_ends": WriteBatcher(
            database,
            QUERIES["end-trips"],
            invalidate=invalidate,
            stale_keys=lambda row: cachekeys.after_trip_end(row["trip_id"], row["card_id"]),
        ),
    }
