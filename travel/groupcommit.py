"""Group commit: writes of one kind that arrive together share one call, one commit, one
invalidation (docs/design.md: writes, performance).

The writes of one kind submitted during one event-loop tick go to PostgreSQL as ONE call of a
batch function of sql/functions.sql (recharge_cards, board_cards, end_trips), one array per
parameter: one round trip, one transaction, one commit for them all. A lone write is a batch
of one, sent on the next tick: no timer, no added wait. While `max_in_flight` batches of a
kind are running, new writes gather for the next one, so batches grow with the load, as
PostgreSQL's own group commit of WAL flushes does. A batch that reaches `max_batch` items goes
at once, even past `max_in_flight`: waiting would not make it any bigger.

A batch is invisible to each client. The function answers one row per item, its result or
its refusal (a SQLSTATE of errors.SQLSTATE_PROBLEMS), decided without raising, so a refused
item never aborts the others. An error the call raises aborts the whole batch: its items run
again one by one, and only the guilty one fails. A connection lost mid-call is not retried
(the batch may have committed, as a single write might have): each item gets that error, a
503. The keys that the batch's writes made stale go to Redis in one invalidation, after the
commit; only then are the answers released. The function's answer is checked before anyone
is answered (one row per item, items 1..n): a broken invariant fails every item of the batch
with a 500 problem that names it, never a silent or partial answer. The batch runs in a task of its own: a client
that goes away cancels its own wait, never the batch of the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncpg
import msgspec

import cachekeys
from travel import models
from travel.database import Database, Overloaded, Query, rows_as
from travel.errors import DATABASE_UNAVAILABLE_ERRORS, Problem, refusal

log = logging.getLogger("travel.groupcommit")

MAX_BATCH = 64  # items per call: a bound on one transaction's length and locks
MAX_IN_FLIGHT = 2  # batches of one kind running at once; past it, writes gather for the next
# Every batch function's rows start with these; the answer's columns follow, in its fields' order.
LEADING_COLUMNS = ("item", "refusal", "message", "detail")

Item = tuple[Any, ...]  # one value per parameter of the batch function
# An item's answer, and its whole row (for the columns the caller needs beyond the answer).
Result = tuple[Any, asyncpg.Record]
StaleKeys = Callable[[asyncpg.Record], Iterable[bytes]]
Invalidate = Callable[[Sequence[bytes]], Awaitable[None]]
# Refused outright: the batch never ran (or may have committed, unknown): never retried.
UNANSWERED: tuple[type[BaseException], ...] = (Overloaded, *DATABASE_UNAVAILABLE_ERRORS)
Outcome: TypeAlias = "Result | BaseException"


class BrokenInvariant(Exception):
    """A batch function answered something other than one row per item, items 1..n."""


@dataclass(frozen=True)
class BatchKind:
    """One batched write: its batch function's query, the Struct its rows answer (the columns
    after LEADING_COLUMNS, in the Struct's field order, checked at start-up) and the keys a
    row makes stale."""

    query: Query
    answer: type[msgspec.Struct]
    stale_keys: StaleKeys


def batch_kind(query_name: str, answer: type[msgspec.Struct], stale_keys: StaleKeys) -> BatchKind:
    return BatchKind(rows_as(query_name, answer, leading=LEADING_COLUMNS), answer, stale_keys)


class WriteBatcher:
    """Sends the writes submitted together as one call of `kind.query`, a batch function."""

    def __init__(
        self,
        database: Database,
        kind: BatchKind,
        invalidate: Invalidate,
        *,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.database = database
        self.kind = kind
        self.invalidate = invalidate
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._answer_end = len(LEADING_COLUMNS) + len(kind.answer.__struct_fields__)
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._flush_scheduled = False
        self._batches: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def submit(self, *item: Any) -> Result:
        """Write `item` in the next batch. Returns its answer (a `kind.answer`) and its row once
        the batch has committed and invalidated; raises its refusal as a Problem, or the error
        that failed it."""
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
                key for outcome in outcomes if isinstance(outcome, tuple) for key in self.kind.stale_keys(outcome[1])
            )
            if stale:
                await self.invalidate(list(stale))
        except BrokenInvariant as broken:
            # The batch may have committed: nobody can be told it did, or that it did not.
            log.error("%s: %s", self.kind.query.name, broken)
            failure = Problem(500, "INTERNAL_ERROR", f"the write's batch broke an invariant: {broken}")
            outcomes = [failure] * len(batch)
        except Exception:  # a fault of ours after the call: never a task exception nobody reads
            log.exception("%s: a batch failed after its call", self.kind.query.name)
            outcomes = [Problem(500, "INTERNAL_ERROR", "the request could not be completed")] * len(batch)
        finally:  # committed and invalidated (or failed): now, and only now, the answers
            for index, (_, future) in enumerate(batch):
                if future.done():  # its client went away
                    continue
                if index >= len(outcomes):  # the batch itself was cancelled (shutdown)
                    future.cancel()
                elif isinstance(outcome := outcomes[index], BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    async def _call(self, items: list[Item]) -> list[Outcome]:
        """Each item's result, or the exception that refused or failed it."""
        try:
            rows = await self.database.run(self.kind.query, *columns(items))
        except UNANSWERED as error:
            return [error] * len(items)
        except Exception as error:
            if len(items) == 1:
                return [error]
            log.warning(
                "a batch of %d writes failed (%s); running them one by one", len(items), error.__class__.__name__
            )
            return [(await self._call([item]))[0] for item in items]
        return [self._outcome(row) for row in in_item_order(rows, len(items))]

    def _outcome(self, row: asyncpg.Record) -> Outcome:
        """An item's answer and row, or its refusal as the Problem a single write would have raised."""
        sqlstate = row["refusal"]
        if sqlstate is not None:
            return refusal(sqlstate, row["message"], row["detail"])
        return self.kind.answer(*row[len(LEADING_COLUMNS) : self._answer_end]), row


def in_item_order(rows: Sequence[asyncpg.Record], count: int) -> list[asyncpg.Record]:
    """`rows` by item number, once each asserted to be exactly one row per item 1..count."""
    if len(rows) != count:
        raise BrokenInvariant(f"{len(rows)} rows for {count} items")
    ordered: list[asyncpg.Record | None] = [None] * count
    for row in rows:
        number = row["item"]
        if not (isinstance(number, int) and 1 <= number <= count) or ordered[number - 1] is not None:
            raise BrokenInvariant(f"item numbers {sorted(row['item'] for row in rows)} are not 1..{count}")
        ordered[number - 1] = row
    return ordered  # type: ignore[return-value]  # every slot filled: count rows, each in its own


def columns(items: list[Item]) -> list[list[Any]]:
    """Items (rows of values) as the batch function's arrays (one per parameter)."""
    return [list(column) for column in zip(*items, strict=True)]


RECHARGES = batch_kind(
    "recharge-cards", models.Recharge, lambda row: cachekeys.after_recharge(row["card_id"], row["user_id"])
)
BOARDINGS = batch_kind("board-cards", models.Boarding, lambda row: cachekeys.after_boarding(row["card_id"]))
TRIP_ENDS = batch_kind("end-trips", models.Trip, lambda row: cachekeys.after_trip_end(row["trip_id"], row["card_id"]))
KINDS = {"recharges": RECHARGES, "boardings": BOARDINGS, "trip_ends": TRIP_ENDS}


def write_batchers(database: Database, invalidate: Invalidate) -> dict[str, WriteBatcher]:
    """The API's batched writes, by the name the handlers find them under in the app state."""
    return {name: WriteBatcher(database, kind, invalidate) for name, kind in KINDS.items()}
