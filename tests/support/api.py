"""Helpers of the HTTP API tests (tests/test_api_*.py): build data through the API, look at
the database behind it, and check problem answers. Every helper goes through the real server."""

from __future__ import annotations

import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx

from tests.support.stack import Api

PROBLEM_JSON = "application/problem+json"
SITP_FARE = 2950
CABLE_FARE = 2950
TRANSFER_FARE = 200
_serial = itertools.count(1)


# ---------------------------------------------------------------- the database behind the API
async def fetch(api: Api, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(api.database_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def fetchval(api: Api, sql: str, *args: Any) -> Any:
    return (await fetch(api, sql, *args))[0][0]


async def execute(api: Api, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(api.database_url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


SNAPSHOT_SQL = """
SELECT (SELECT count(*) FROM users) AS users,
       (SELECT coalesce(string_agg(user_id || ':' || email || ':' || id_number, ',' ORDER BY user_id), '')
        FROM users) AS user_rows,
       (SELECT coalesce(string_agg(card_id || ':' || card_number || ':' || status || ':' || balance, ','
                                   ORDER BY card_id), '') FROM cards) AS cards,
       (SELECT count(*) FROM recharges) AS recharges,
       (SELECT count(*) FROM trips) AS trips,
       (SELECT count(*) FROM trips WHERE disembarking_time IS NOT NULL) AS completed_trips,
       (SELECT count(*) FROM idempotency_keys) AS idempotency_keys,
       (SELECT coalesce(sum(trips), 0) || '/' || coalesce(sum(revenue), 0) FROM trip_counters) AS counters
"""


async def snapshot(api: Api) -> dict[str, Any]:
    """What a rejected write must leave as it was."""
    return dict((await fetch(api, SNAPSHOT_SQL))[0])


@contextlib.asynccontextmanager
async def unchanged(api: Api) -> AsyncIterator[None]:
    """The database is the same after the block as before it."""
    before = await snapshot(api)
    yield
    assert await snapshot(api) == before


async def balance_in_db(api: Api, card_id: int) -> int:
    return await fetchval(api, "SELECT balance FROM cards WHERE card_id = $1", card_id)


# ---------------------------------------------------------------- answers
def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """`response` is an RFC 9457 problem with this status (and code); returns its body."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].split(";")[0] == PROBLEM_JSON, response.headers
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["type"], str) and body["type"]
    if code is not None:
        assert body["code"] == code, body
    return body


def json_body(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].split(";")[0] == "application/json"
    return response.json()


# ---------------------------------------------------------------- data made through the API
def user_fields(**overrides: Any) -> dict[str, Any]:
    """A valid, unique registration body."""
    n = next(_serial)
    unique = uuid.uuid4().hex[:10]
    fields: dict[str, Any] = {
        "first_name": "Camila",
        "last_name": "Rojas",
        "email": f"camila.{n}.{unique}@example.co",
        "id_number": f"CC{n}{unique}"[:20],
    }
    fields.update(overrides)
    return fields


async def make_user(api: Api, **overrides: Any) -> dict[str, Any]:
    response = await api.http.post("/users", headers=api.auth("admin"), json=user_fields(**overrides))
    return json_body(response, 201)


async def make_card(api: Api, user_id: int, card_number: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"user_id": user_id}
    if card_number is not None:
        body["card_number"] = card_number
    return json_body(await api.http.post("/cards", headers=api.auth("admin"), json=body), 201)


async def recharge(
    api: Api, card_id: int, amount: int, *, role: str = "admin", key: str | None = None, **extra: Any
) -> httpx.Response:
    headers = api.auth(role)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await api.http.post("/recharges", headers=headers, json={"card_id": card_id, "amount": amount, **extra})


async def make_user_with_card(api: Api, balance: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new user holding one active card with `balance` pesos (one recharge when not 0)."""
    user = await make_user(api)
    card = await make_card(api, user["user_id"])
    if balance:
        answer = json_body(await recharge(api, card["card_id"], balance), 201)
        assert answer["balance"] == balance
        card["balance"] = balance
    return user, card


async def board(
    api: Api, card_id: int, route_id: int = 1, station_id: int = 1, role: str = "validator"
) -> httpx.Response:
    return await api.http.post(
        "/trips",
        headers=api.auth(role),
        json={"card_id": card_id, "route_id": route_id, "boarding_station_id": station_id},
    )


async def end_trip(api: Api, trip_id: int, station_id: int = 2, role: str = "validator") -> httpx.Response:
    return await api.http.post(
        f"/trips/{trip_id}/end", headers=api.auth(role), json={"disembarking_station_id": station_id}
    )


async def set_status(api: Api, card_id: int, status: str) -> dict[str, Any]:
    return json_body(await api.http.patch(f"/cards/{card_id}", headers=api.auth("admin"), json={"status": status}))


async def get_cached(api: Api, path: str, expected: str, role: str | None = None) -> Any:
    """GET a cached read (with `role`'s token), which must answer 200 with X-Cache `expected`;
    returns the JSON."""
    response = await api.http.get(path, headers=api.auth(role) if role else None)
    body = json_body(response)
    assert response.headers.get("x-cache") == expected, (path, response.headers.get("x-cache"))
    return body


def raw_json(value: Any) -> bytes:
    return json.dumps(value).encode()
