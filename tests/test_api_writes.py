"""Writes over HTTP: who may make them, what they store, and how they behave under concurrency."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.support.api import (
    assert_problem,
    balance_in_db,
    board,
    fetch,
    fetchval,
    json_body,
    make_card,
    make_user,
    make_user_with_card,
    recharge,
    snapshot,
    user_fields,
)
from tests.support.stack import Api

ROLES = (None, "admin", "recharge_point", "validator")


# ---------------------------------------------------------------- roles
Send = Callable[[dict[str, str]], Awaitable[httpx.Response]]


async def write_sender(api: Api, endpoint: str) -> Send:
    """A function that sends one new, valid request of `endpoint` with the given headers."""
    user, card = await make_user_with_card(api, 100_000)
    card_id = card["card_id"]
    if endpoint == "POST /users":
        return lambda headers: api.http.post("/users", headers=headers, json=user_fields())
    if endpoint == "POST /cards":
        return lambda headers: api.http.post("/cards", headers=headers, json={"user_id": user["user_id"]})
    if endpoint == "PATCH /cards/{card_id}":
        return lambda headers: api.http.patch(f"/cards/{card_id}", headers=headers, json={"status": "blocked"})
    if endpoint == "POST /recharges":
        return lambda headers: api.http.post("/recharges", headers=headers, json={"card_id": card_id, "amount": 700})
    if endpoint == "POST /trips":
        return lambda headers: api.http.post(
            "/trips", headers=headers, json={"card_id": card_id, "route_id": 1, "boarding_station_id": 1}
        )
    assert endpoint == "POST /trips/{trip_id}/end"

    async def end(headers: dict[str, str]) -> httpx.Response:
        trip = json_body(await board(api, card_id), 201)
        return await api.http.post(
            f"/trips/{trip['trip_id']}/end", headers=headers, json={"disembarking_station_id": 2}
        )

    return end


@pytest.mark.parametrize(
    ("endpoint", "allowed", "status"),
    [
        ("POST /users", {"admin"}, 201),
        ("POST /cards", {"admin"}, 201),
        ("PATCH /cards/{card_id}", {"admin"}, 200),
        ("POST /recharges", {"admin", "recharge_point"}, 201),
        ("POST /trips", {"admin", "validator"}, 201),
        ("POST /trips/{trip_id}/end", {"admin", "validator"}, 200),
    ],
)
async def test_role_matrix_of_every_write(api: Api, endpoint: str, allowed: set[str], status: int) -> None:
    send = await write_sender(api, endpoint)
    answers = {}
    for role in ROLES:
        headers = api.auth(role) if role else {}
        before = await snapshot(api)
        response = await send(headers)
        answers[role] = (response.status_code, response.json().get("code"))
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json"
            if endpoint != "POST /trips/{trip_id}/end":  # the sender itself boarded for it
                assert await snapshot(api) == before, role
    expected = {
        role: (status, None) if role in allowed else (401, "UNAUTHORIZED") if role is None else (403, "FORBIDDEN")
        for role in ROLES
    }
    assert answers == expected


# ---------------------------------------------------------------- what is stored
async def test_sql_metacharacters_are_stored_verbatim(api: Api) -> None:
    fields = user_fields(
        first_name="Robert'); DROP TABLE users;--",
        last_name="O'Brien \"%_\\ $1 ;",
        email="o'brien+%_@example.co",
        residential_address="Calle 10 # 5-51'; DELETE FROM cards; --",
        city_of_birth="$$ SELECT pg_sleep(10) $$",
    )
    user = await make_user(api, **fields)
    assert {k: user[k] for k in fields} == fields
    card = await make_card(api, user["user_id"])
    rows = await fetch(
        api,
        "SELECT first_name, last_name, email, residential_address, city_of_birth FROM users WHERE user_id = $1",
        user["user_id"],
    )
    assert dict(rows[0]) == {k: fields[k] for k in rows[0].keys()}
    assert await fetchval(api, "SELECT count(*) FROM cards WHERE card_id = $1", card["card_id"]) == 1
    assert json_body(await api.http.get("/users/latest", headers=api.auth("admin")))[0] == user
    # A LIKE-pattern email does not match other addresses when checking uniqueness.
    other = await make_user(api, email="oxbrien+ab@example.co")
    assert other["email"] == "oxbrien+ab@example.co"


# ---------------------------------------------------------------- concurrency
async def test_32_concurrent_recharges_with_one_key_make_one_recharge(api: Api) -> None:
    _, card = await make_user_with_card(api)
    card_id = card["card_id"]
    responses = await asyncio.gather(*(recharge(api, card_id, 2500, key="kiosk-9:0001") for _ in range(32)))
    assert [response.status_code for response in responses] == [201] * 32
    bodies = [response.json() for response in responses]
    assert all(body == bodies[0] for body in bodies)
    assert (bodies[0]["amount"], bodies[0]["balance"]) == (2500, 2500)
    assert sum("idempotent-replayed" not in response.headers for response in responses) == 1
    rows = await fetch(api, "SELECT recharge_id FROM recharges WHERE card_id = $1", card_id)
    assert [row["recharge_id"] for row in rows] == [bodies[0]["recharge_id"]]
    assert await balance_in_db(api, card_id) == 2500

    # The same key from another token is another key: a second recharge, replayed on its own.
    theirs = await asyncio.gather(
        *(recharge(api, card_id, 2500, key="kiosk-9:0001", role="recharge_point") for _ in range(8))
    )
    assert [response.status_code for response in theirs] == [201] * 8
    assert len({response.json()["recharge_id"] for response in theirs}) == 1
    assert theirs[0].json()["recharge_id"] != bodies[0]["recharge_id"]
    assert theirs[0].json()["balance"] == 5000
    assert await fetchval(api, "SELECT count(*) FROM recharges WHERE card_id = $1", card_id) == 2
    assert await balance_in_db(api, card_id) == 5000
    assert json_body(await recharge(api, card_id, 2500, key="kiosk-9:0001"), 201) == bodies[0]


async def test_concurrent_recharges_with_one_key_and_different_bodies_make_one_recharge(api: Api) -> None:
    _, card = await make_user_with_card(api)
    responses = await asyncio.gather(*(recharge(api, card["card_id"], 1000 + n, key="same") for n in range(16)))
    assert Counter(response.status_code for response in responses) == {201: 1, 422: 15}
    winner = next(response.json() for response in responses if response.status_code == 201)
    for response in responses:
        if response.status_code == 422:
            assert_problem(response, 422, "IDEMPOTENCY_KEY_REUSED")
    assert await balance_in_db(api, card["card_id"]) == winner["amount"]
    assert await fetchval(api, "SELECT count(*) FROM recharges") == 1


async def test_64_concurrent_recharges_add_every_amount_once(api: Api) -> None:
    _, card = await make_user_with_card(api)
    card_id = card["card_id"]
    responses = await asyncio.gather(
        *(recharge(api, card_id, 1000, role=("admin", "recharge_point")[n % 2]) for n in range(64))
    )
    assert [response.status_code for response in responses] == [201] * 64
    bodies = [response.json() for response in responses]
    assert len({body["recharge_id"] for body in bodies}) == 64
    # Serialised on the card: each answer saw its own step of the balance.
    assert sorted(body["balance"] for body in bodies) == [1000 * n for n in range(1, 65)]
    assert await balance_in_db(api, card_id) == 64_000
    rows = await fetch(api, "SELECT count(*), sum(amount) FROM recharges WHERE card_id = $1", card_id)
    assert tuple(rows[0]) == (64, 64_000)
    assert json_body(await api.http.get(f"/cards/{card_id}/balance"))["balance"] == 64_000
    assert len(json_body(await api.http.get(f"/users/{card['user_id']}/recharges", headers=api.auth("admin")))) == 20
