"""The latency table (the seed's): sequential requests on one keep-alive connection.

A MISS row is made cold the way a user would: before each timed read, a write through the
API that invalidates what the read shows (a recharge of the card, a boarding for the trip
aggregates), or a read of an id never read before (a trip just boarded). Every timed answer
must carry the X-Cache value its row claims; a row where one does not is invalid, not a
figure. /routes and /stations have no MISS row: no write invalidates them (only their TTL).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.figures import summarize
from bench.fixture import Target, client, expect, get, post, send
from bench.scenarios import write_requests
from bench.wire import Connection, Request, x_cache

MakeCold = Callable[[], Awaitable[str]]  # does what makes the read cold; returns the path to read


class Writer:
    """Writes on one card, untimed, on a client of their own, that make cached reads cold."""

    def __init__(self, target: Target, key_prefix: str) -> None:
        self.target = target
        self.client = client(target.url)
        self.key_prefix = key_prefix
        self.sent = itertools.count()
        self.boardings = itertools.count()

    async def write(self, request: Request) -> dict[str, Any]:
        number = next(self.sent)
        answer = await send(self.client, request, f"{self.key_prefix}-{number}")
        written: dict[str, Any] = expect([answer], 201, f"{request.method} {request.path}")[0]
        return written

    async def aclose(self) -> None:
        await self.client.aclose()

    async def board(self) -> dict[str, Any]:
        fixture = self.target.data
        route = fixture.route_ids[next(self.boardings) % 2]  # alternating: transfers, cheap fares
        return await self.write(
            post(
                "/trips",
                {"card_id": fixture.card_ids[0], "route_id": route, "boarding_station_id": fixture.station_id},
                self.target.auth(),
            )
        )

    async def recharge(self) -> dict[str, Any]:
        return await self.write(
            post(
                "/recharges",
                {"card_id": self.target.data.card_ids[0], "amount": 100},
                self.target.auth(),
                unique_key=True,
            )
        )


def after(write: Callable[[], Awaitable[Any]], path: str) -> MakeCold:
    async def make_cold() -> str:
        await write()
        return path

    return make_cold


def cached_endpoints(target: Target, writer: Writer) -> list[tuple[str, MakeCold]]:
    """(row name, how to make it cold) for every cached read that a write invalidates."""
    fixture = target.data
    card, user = fixture.card_ids[0], fixture.user_ids[0]  # user 0 owns card 0

    async def new_trip() -> str:
        return f"/trips/{(await writer.board())['trip_id']}"

    return [
        *((path, after(writer.board, path)) for path in AGGREGATES),
        ("/cards/{card_id}/balance", after(writer.recharge, f"/cards/{card}/balance")),
        ("/trips/{trip_id}", new_trip),
        ("/trips/card/{card_id}", after(writer.board, f"/trips/card/{card}")),
        ("/users/{user_id}/recharges", after(writer.recharge, f"/users/{user}/recharges")),
    ]


AGGREGATES = (
    "/trips/total",
    "/trips/total/localities",
    "/finance/revenue",
    "/finance/revenue/localities",
    "/trips/hourly?hours=24",
)
UNCACHED = ("/users/count", "/users/active/count", "/users/latest")
NEVER_INVALIDATED = ("/routes", "/stations")


@dataclass
class Timed:
    latencies: list[float]
    errors: int = 0  # answers other than 2xx
    unexpected: int = 0  # answers whose X-Cache is not the row's

    def row(self) -> dict[str, Any]:
        return {
            "n": len(self.latencies),
            "errors": self.errors,
            "unexpected": self.unexpected,
            **summarize(self.latencies),
        }


async def timed(
    connection: Connection,
    n: int,
    make_request: Callable[[], Awaitable[Request]],
    expected_cache: str | None,
    key_prefix: str,
) -> dict[str, Any]:
    """`n` requests, one at a time, each made by `make_request` (untimed), then timed and checked."""
    result = Timed([])
    for number in range(n):
        request = await make_request()
        started = time.perf_counter()
        status, head, _ = await connection.send(request, f"{key_prefix}-{number}" if request.unique_key else None)
        result.latencies.append((time.perf_counter() - started) * 1000.0)
        result.errors += not 200 <= status < 300
        result.unexpected += expected_cache is not None and x_cache(head) != expected_cache
    return result.row()


def reads(path: str, auth: tuple[tuple[str, str], ...] = ()) -> Callable[[], Awaitable[Request]]:
    async def make() -> Request:
        return get(path, auth)

    return make


def cycling(requests: list[Request]) -> Callable[[], Awaitable[Request]]:
    lap = itertools.cycle(requests)

    async def make() -> Request:
        return next(lap)

    return make


def cold_read(make_cold: MakeCold, auth: tuple[tuple[str, str], ...] = ()) -> Callable[[], Awaitable[Request]]:
    async def make() -> Request:
        return get(await make_cold(), auth)

    return make


async def cached_row(
    connection: Connection, target: Target, name: str, make_cold: MakeCold, n: int, run_id: str
) -> list[dict[str, Any]]:
    """The MISS row (made cold before each read), then the HIT row (the same path, read again)."""
    auth = target.auth()  # some reads name a person: admin only; the header costs the others nothing
    miss = await timed(connection, n, cold_read(make_cold, auth), "MISS", run_id)
    path = await make_cold()
    await connection.send(get(path, auth))  # its fill
    hit = await timed(connection, n, reads(path, auth), "HIT", run_id)
    return [{"endpoint": "GET " + name, "case": "MISS", **miss}, {"endpoint": "GET " + name, "case": "HIT", **hit}]


async def latency_rows(target: Target, n: int, run_id: str) -> list[dict[str, Any]]:
    """Every read (MISS and HIT, or uncached) and both writes, `n` times each."""
    connection, writer = Connection(target.url), Writer(target, f"{run_id}-cold-{target.label}")
    rows: list[dict[str, Any]] = []
    try:
        for name, make_cold in cached_endpoints(target, writer):
            rows += await cached_row(connection, target, name, make_cold, n, run_id)
        for path in NEVER_INVALIDATED:
            await connection.send(get(path))  # filled, if it was not
            rows.append(
                {"endpoint": "GET " + path, "case": "HIT", **await timed(connection, n, reads(path), "HIT", run_id)}
            )
        for path in UNCACHED:
            rows.append(
                {
                    "endpoint": "GET " + path,
                    "case": "uncached",
                    **await timed(connection, n, reads(path, target.auth()), None, run_id),
                }
            )
        for kind, name in (("recharge", "POST /recharges"), ("boarding", "POST /trips")):
            rows.append(
                {
                    "endpoint": name,
                    "case": "write",
                    **await timed(
                        connection, n, cycling(write_requests(target, kind)), None, f"{run_id}-latency-{target.label}"
                    ),
                }
            )
    finally:
        connection.close()
        await writer.aclose()
    return rows


async def aggregate_miss_costs(target: Target, n: int, run_id: str) -> dict[str, dict[str, Any]]:
    """The miss cost of every aggregate (made cold by a boarding before each read) and of the uncached counts."""
    connection, writer = Connection(target.url), Writer(target, f"{run_id}-scale")
    try:
        costs: dict[str, dict[str, Any]] = {}
        for path in AGGREGATES:
            costs[path] = await timed(connection, n, cold_read(after(writer.board, path)), "MISS", run_id)
        for path in UNCACHED[:2]:
            costs[path] = await timed(connection, n, reads(path), None, run_id)
    finally:
        connection.close()
        await writer.aclose()
    return costs
