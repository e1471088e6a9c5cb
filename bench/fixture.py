"""The bench's own data on a deployment, made through its admin API (HTTP only).

The bench never writes SQL into the service's tables nor names a Redis key: users, cards,
funding and trips are POSTed with the admin token the bench gave the API (or --token).
Set-up calls go through httpx; nothing they cost is in a figure.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httpx

from bench.wire import REQUEST_TIMEOUT, Request

API = "/api/v1"
BENCH_CARDS = 256  # funded cards that the hit scenario cycles over
WRITE_CARDS = 64  # of them, the cards writes land on at random (and the durable-write floor updates)
BENCH_USERS = 16
FUNDING_RECHARGES = 3  # x 1,000,000 pesos (the balance limit is 5,000,000)
SETUP_CONNECTIONS = 8


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


def client(url: str) -> httpx.AsyncClient:
    """An httpx client for set-up calls to `url` (never through a proxy of the environment)."""
    return httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT, trust_env=False)


async def send(client: httpx.AsyncClient, request: Request, key: str | None = None) -> httpx.Response:
    headers = dict(request.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    if request.body is not None:
        headers["Content-Type"] = "application/json"
    return await client.request(request.method, request.path, content=request.body, headers=headers)


async def send_all(url: str, requests: list[Request], key_prefix: str) -> list[httpx.Response]:
    """Send set-up requests over a few connections; answers in the order of `requests`."""
    answers: dict[int, httpx.Response] = {}
    pending = iter(enumerate(requests))  # shared by the workers: one event loop, no races

    async def worker(session: httpx.AsyncClient) -> None:
        for index, request in pending:
            answers[index] = await send(session, request, f"{key_prefix}-{index}" if request.unique_key else None)

    async with client(url) as session:
        await asyncio.gather(*(worker(session) for _ in range(SETUP_CONNECTIONS)))
    return [answers[index] for index in range(len(requests))]


def expect(answers: list[httpx.Response], status: int, what: str) -> list[Any]:
    for answer in answers:
        if answer.status_code != status:
            raise RuntimeError(f"{what}: expected {status}, got {answer.status_code}: {answer.text[:300]}")
    return [answer.json() for answer in answers]


async def fetch_json(url: str, path: str, auth: tuple[tuple[str, str], ...] = ()) -> Any:
    async with client(url) as session:
        return expect([await session.get(path, headers=dict(auth))], 200, f"GET {path}")[0]


async def metric_total(target: Target, name: str) -> float | None:
    """The sum of a metric's samples (over all labels) in the API's /metrics, if it has them."""
    if not target.has_metrics:
        return None
    async with client(target.url) as session:
        text = (await session.get("/metrics")).text
    samples = [
        line.rpartition(" ")[2]
        for line in text.splitlines()
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{")
    ]
    return sum(float(value) for value in samples) if samples else None


async def serves_metrics(target: Target) -> bool:
    """Whether the target exposes this API's cache counters (B may be another implementation)."""
    async with client(target.url) as session:
        answer = await session.get("/metrics")
    return answer.status_code == 200 and "travel_cache_misses_total" in answer.text


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
