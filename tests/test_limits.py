"""Issue 11's limits: a balance has a maximum (409 BALANCE_LIMIT), every SQLSTATE is mapped by
class (never an unexplained 500), and an Idempotency-Key with surrounding spaces, or sent
twice, is refused (422) rather than silently keyed differently."""

from __future__ import annotations

import asyncio
import urllib.parse

import asyncpg
import msgspec
import pytest

from tests.support.api import (
    assert_problem,
    balance_in_db,
    execute,
    fetchval,
    json_body,
    make_user_with_card,
    recharge,
    unchanged,
)
from tests.support.db import connected
from tests.support.stack import Api
from travel import errors, models


# ---------------------------------------------------------------- the balance maximum
async def test_a_recharge_past_the_balance_maximum_is_409_and_changes_nothing(api: Api) -> None:
    assert await fetchval(api, "SELECT card_balance_max()") == models.BALANCE_MAX
    assert (
        await fetchval(api, "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'cards_balance_max'")
        == f"CHECK ((balance <= {models.BALANCE_MAX}))"
    )
    _, card = await make_user_with_card(api)
    for _ in range(4):
        json_body(await recharge(api, card["card_id"], 1_000_000), 201)
    answer = json_body(await recharge(api, card["card_id"], models.BALANCE_MAX - 4_000_000), 201)
    assert answer["balance"] == models.BALANCE_MAX  # the maximum itself is allowed
    for key in (None, "past-the-maximum"):
        async with unchanged(api):
            body = assert_problem(
                await recharge(api, card["card_id"], 1, role="recharge_point", key=key), 409, "BALANCE_LIMIT"
            )
        assert (body["balance"], body["balance_max"], body["card_id"]) == (
            models.BALANCE_MAX,
            models.BALANCE_MAX,
            card["card_id"],
        )
    with pytest.raises(asyncpg.CheckViolationError):  # the schema holds it too
        await execute(api, "UPDATE cards SET balance = $1 WHERE card_id = $2", models.BALANCE_MAX + 1, card["card_id"])


async def test_a_card_imported_near_the_bigint_maximum_is_refused_not_a_500(api: Api) -> None:
    """The issue's overflow: a balance near 2**63 (possible only in data imported before the
    constraint, which is then NOT VALID) recharged."""
    _, card = await make_user_with_card(api)
    near = 2**63 - 10
    await execute(api, "ALTER TABLE cards DROP CONSTRAINT cards_balance_max")
    await execute(api, "UPDATE cards SET balance = $1, opening_balance = $1 WHERE card_id = $2", near, card["card_id"])
    await execute(api, "ALTER TABLE cards ADD CONSTRAINT cards_balance_max CHECK (balance <= 5000000) NOT VALID")
    async with unchanged(api):
        assert_problem(await recharge(api, card["card_id"], 100), 409, "BALANCE_LIMIT")
        # With a key, the stored answer's balance overflows first: a data exception, 422.
        body = assert_problem(await recharge(api, card["card_id"], 100, key="overflow"), 422, "VALIDATION_ERROR")
    assert body["sqlstate"] == "22003"
    assert await balance_in_db(api, card["card_id"]) == near


# ---------------------------------------------------------------- SQLSTATE classes
def raised(code: str) -> str:
    return f"DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{code}'; END $$"


# (statement that fails on a real PostgreSQL, expected SQLSTATE, status, code)
FAILURES = [
    ("SELECT 9223372036854775807::bigint + 1", "22003", 422, "VALIDATION_ERROR"),
    ("SELECT 'x'::integer", "22P02", 422, "VALIDATION_ERROR"),
    ("SELECT 1 / 0", "22012", 422, "VALIDATION_ERROR"),
    ("INSERT INTO recharges (card_id, amount) VALUES (987654321, 1)", "23503", 409, "CONFLICT"),
    ("INSERT INTO locations (name) VALUES (NULL)", "23502", 409, "CONFLICT"),
    ("INSERT INTO locations (name) SELECT name FROM locations LIMIT 1", "23505", 409, "ALREADY_EXISTS"),
    ("INSERT INTO fares (fare_type, value, start_date) VALUES ('X', -1, now())", "23514", 422, "VALIDATION_ERROR"),
    (raised("40001"), "40001", 503, "TRANSACTION_CONFLICT"),
    (raised("40P01"), "40P01", 503, "TRANSACTION_CONFLICT"),
    (raised("55P03"), "55P03", 503, "TRANSACTION_CONFLICT"),
    (raised("53100"), "53100", 503, "DATABASE_UNAVAILABLE"),
    (raised("53200"), "53200", 503, "DATABASE_UNAVAILABLE"),
    (raised("57P01"), "57P01", 503, "DATABASE_UNAVAILABLE"),
    (raised("58030"), "58030", 503, "DATABASE_UNAVAILABLE"),
    (raised("XX000"), "XX000", 503, "DATABASE_UNAVAILABLE"),
    ("BEGIN READ ONLY; INSERT INTO locations (name) VALUES ('x')", "25006", 503, "DATABASE_UNAVAILABLE"),
    (raised("54000"), "54000", 422, "VALIDATION_ERROR"),
    (raised("TRC04"), "TRC04", 409, "BALANCE_LIMIT"),
    # Faults of our own SQL stay 500 (and are logged with their SQLSTATE).
    ("SELECT * FROM no_such_table", "42P01", 500, "INTERNAL_ERROR"),
    ("SELEC 1", "42601", 500, "INTERNAL_ERROR"),
    (raised("P0001"), "P0001", 500, "INTERNAL_ERROR"),
]


@pytest.mark.parametrize(("statement", "sqlstate", "status", "code"), FAILURES, ids=[f[1] for f in FAILURES])
async def test_every_sqlstate_class_is_answered_by_its_meaning(
    database_url: str, statement: str, sqlstate: str, status: int, code: str
) -> None:
    async with connected(database_url) as conn:
        with pytest.raises(asyncpg.PostgresError) as caught:
            await conn.execute(statement)
    assert caught.value.sqlstate == sqlstate
    response = await errors.handle_postgres(None, caught.value)
    body = msgspec.json.decode(response.body)
    assert (response.status_code, body["code"]) == (status, code), body
    assert response.headers["content-type"] == errors.PROBLEM_JSON
    if status == 503:
        assert int(response.headers["retry-after"]) >= 1


# ---------------------------------------------------------------- Idempotency-Key
async def raw_recharge(api: Api, card_id: int, *key_headers: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    """POST /recharges with `key_headers` written byte for byte (an HTTP client would refuse
    or tidy them): returns status, headers and JSON body."""
    url = urllib.parse.urlsplit(api.url)
    body = msgspec.json.encode({"card_id": card_id, "amount": 1000})
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(
            b"POST /api/v1/recharges HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n"
            % len(body)
            + b"Authorization: Bearer "
            + api.auth("recharge_point")["Authorization"].split()[1].encode()
            + b"\r\n"
            + b"".join(b"Idempotency-Key:" + header + b"\r\n" for header in key_headers)
            + b"\r\n"
            + body
        )
        answer = await reader.read()
    finally:
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, msgspec.json.decode(payload)


async def test_idempotency_key_spaces_and_repeats(api: Api) -> None:
    _, card = await make_user_with_card(api)
    status, _, first = await raw_recharge(api, card["card_id"], b" sp-key")
    assert status == 201
    # Leading spaces are not part of a header's value (RFC 9110 5.5): the HTTP parser drops
    # them, so " sp-key" and "sp-key" are one key, at the start of the value as at its end.
    for spelled in (b"sp-key", b"   sp-key", b"\tsp-key"):
        status, headers, again = await raw_recharge(api, card["card_id"], spelled)
        assert (status, again["recharge_id"], headers["idempotent-replayed"]) == (201, first["recharge_id"], "true")
    async with unchanged(api):
        for keys in (
            (b" sp-key ",),
            (b"sp-key ",),
            (b"sp-key\t",),
            (b"other-key  ",),
            (b"sp-key", b"sp-key"),
            (b"sp-key", b"another-key"),
            (b"new-key", b"new-key"),
        ):
            status, _, problem = await raw_recharge(api, card["card_id"], *keys)
            assert (status, problem["code"], problem["field"]) == (422, "VALIDATION_ERROR", "Idempotency-Key"), keys
    assert await balance_in_db(api, card["card_id"]) == 1000
