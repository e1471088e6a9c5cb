"""The bench's own data on a deployment, made through its admin API (HTTP only).

The bench never writes SQL into the service's tables nor names a Redis key: users, cards,
funding and trips are POSTed with the admin token the bench gave the API (or --token).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from bench.loadgen import Connection, Request

API = "/api/v1"
BENCH_CARDS = 256  # funded cards that the hit scenario cycles over
WRITE_CARDS = 64  # of them, the cards writes land on at random (and the durable-write floor updates)
BENCH_USERS = 16
FUNDING_RECHARGES = 3  # x 1,000,000 pesos (the balance limit is 5,000,000)
SETUP_CONNECTIONS = 8

Answer = tuple[int, bytes, bytes]  # status, header block, body


@dataclass
class Fixture:
    """What the bench created on a target, to aim its requests at."""

    user_ids: list[int]  # the first one's recharges are the latency table's row
    card_ids: list[int]
    trip_id: int
    route_ids: list[int]  # two routes: alternating them makes boardings transfers (cheap fares)
    station_id: int

    @property
    def write_cards(self) -> list[int]:
        return self.card_ids[:WRITE_CARDS]


@dataclass
class Target:
    """A deployment of the API under test: A (this tree or --url) or B (--vs)."""

    label: str
    url: str
    token: str
    fixture: Fixture | None = None
    has_metrics: bool = False

    def auth(self) -> tuple[tuple[str, str], ...]:
        return (("Authorization", f"Bearer {self.token}"),)

    @property
    def data(self) -> Fixture:
        assert self.fixture is not None, "prepare_fixture() first"
        return self.fixture


def post(path: str, body: dict[str, Any], auth: tuple[tuple[str, str], ...], unique_key: bool = False) -> Request:
    return Request("POST", API + path, json.dumps(body, separators=(",", ":")).encode(), auth, unique_key)


def get(path: str, auth: tuple[tuple[str, str], ...] = ()) -> Request:
    return Request("GET", API + path, headers=auth)


async def send_all(url: str, requests: list[Request], key_prefix: str) -> list[Answer]:
    """Send set-up requests over a few connections; answers in the order of `requests`."""
    answers: list[Answer] = [(0, b"", b"")] * len(requests)
    pending = iter(enumerate(requests))  # shared by the workers: one event loop, no races

    async def worker() -> None:
        connection = Connection(url)
        try:
            for index, request in pending:
                answers[index] = await connection.send(request, f"{key_prefix}-{index}" if request.unique_key else None)
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(SETUP_CONNECTIONS)))
    return answers


def expect(answers: list[Answer], status: int, what: str) -> list[Any]:
    for got, _, body in answers:
        if got != status:
            raise RuntimeError(f"{what}: expected {status}, got {got}: {body[:300]!r}")
    return [json.loads(body) for _, _, body in answers]


async def fetch(url: str, request: Request) -> Answer:
    connection = Connection(url)
    try:
        return await connection.send(request)
    finally:
        await connection.close()


async def fetch_json(url: str, path: str, auth: tuple[tuple[str, str], ...] = ()) -> Any:
    return expect([await fetch(url, Request("GET", path, headers=auth))], 200, f"GET {path}")[0]


async def metric_total(target: Target, name: str) -> float | None:
    """The sum of a metric's samples (over all labels) in the API's /metrics, if it has them."""
    if not target.has_metrics:
        return None
    _, _, body = await fetch(target.url, Request("GET", "/metrics"))
    samples = [
        line.rpartition(" ")[2]
        for line in body.decode().splitlines()
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{")
    ]
    return sum(float(value) for value in samples) if samples else None


async def serves_metrics(target: Target) -> bool:
    """Whether the target exposes this API's cache counters (B may be another implementation)."""
    status, _, body = await fetch(target.url, Request("GET", "/metrics"))
    return status == 200 and b"travel_cache_misses_total" in body


async def issue_cards(target: Target, owners: list[int], count: int, key_prefix: str) -> list[int]:
    """`count` new cards (never read, so nothing of theirs is cached), spread over `owners`."""
    cards = expect(
        await send_all(
            target.url,
            [post("/cards", {"user_id": owners[n % len(owners)]}, target.auth()) for n in range(count)],
            key_prefix,
        ),
        201,
        "POST /cards",
    )
    return [card["card_id"] for card in cards]


async def prepare_fixture(target: Target, run_id: str) -> Fixture:
    """Users, funded cards and trips of the bench's own, made through the API itself."""
    url, auth = target.url, target.auth()
    routes = await fetch_json(url, API + "/routes")
    stations = await fetch_json(url, API + "/stations")
    route_ids = [r["route_id"] for r in routes if r["is_active"] and r["route_type"] != "CABLE"][:2]
    if len(route_ids) < 2 or not stations:
        raise RuntimeError(f"{target.label} needs two active non-cable routes and a station (load demo data)")
    station_id = stations[0]["station_id"]
    users = expect(
        await send_all(
            url,
            [
                post(
                    "/users",
                    {
                        "first_name": "Bench",
                        "last_name": f"User {n}",
                        "email": f"{run_id}-{n}@bench.example",
                        "id_number": f"{run_id}-{n}",
                    },
                    auth,
                )
                for n in range(BENCH_USERS)
            ],
            run_id,
        ),
        201,
        "POST /users",
    )
    user_ids = [u["user_id"] for u in users]
    card_ids = await issue_cards(target, user_ids, BENCH_CARDS, run_id)
    expect(
        await send_all(
            url,
            [
                post("/recharges", {"card_id": card, "amount": 1_000_000}, auth, unique_key=True)
                for card in card_ids
                for _ in range(FUNDING_RECHARGES)
            ],
            run_id + "-fund",
        ),
        201,
        "POST /recharges",
    )
    trips = expect(
        await send_all(
            url,
            [
                post("/trips", {"card_id": card, "route_id": route_ids[0], "boarding_station_id": station_id}, auth)
                for card in card_ids
            ],
            run_id,
        ),
        201,
        "POST /trips",
    )
    return Fixture(user_ids, card_ids, trips[0]["trip_id"], route_ids, station_id)
