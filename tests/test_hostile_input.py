"""Hostile input (issue 5), beyond what test_api_errors.py covers: odd spellings of path ids and
integers, unicode stored verbatim, control characters refused in every text field, SQL
metacharacters everywhere, JSON edge cases and a slowly dribbled oversized body.

Each case is a test of its own, on one server started for the module; a refused case must
leave the database exactly as it was."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

import server
from tests.support.api import assert_problem, json_body, make_user_with_card, user_fields
from tests.support.hostile import Snapshots, fill_path, is_problem, op_label, valid_body
from tests.support.stack import Api, module_api
from travel.endpoints.declaration import Endpoint
from travel.endpoints.writes import create_recharge
from travel.startup.embedded import EmbeddedStack

PATH_OPS = [op for op in server.ENDPOINTS if op.path_ids()]
BODY_OPS = [op for op in server.ENDPOINTS if op.body is not None]


# ---------------------------------------------------------------- one server for the module
@pytest.fixture(scope="module")
async def api(stack: EmbeddedStack, template_url: str) -> AsyncIterator[Api]:
    async with module_api(stack, "hostile") as running:
        yield running


@pytest.fixture(scope="module")
async def conn(api: Api) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(api.database_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def snaps(conn: asyncpg.Connection) -> Snapshots:
    return Snapshots(conn)


@pytest.fixture(scope="module")
async def world(api: Api) -> dict[str, int]:
    """A user with a well-funded card and an open trip: valid ids for the bodies and paths."""
    user, card = await make_user_with_card(api, 1_000_000)
    trip = json_body(
        await api.http.post(
            "/trips",
            headers=api.auth("validator"),
            json={"card_id": card["card_id"], "route_id": 1, "boarding_station_id": 1},
        ),
        201,
    )
    return {"user_id": user["user_id"], "card_id": card["card_id"], "trip_id": trip["trip_id"]}


@pytest.fixture(scope="module")
async def tables(conn: asyncpg.Connection) -> list[str]:
    return [
        row["tablename"]
        for row in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1")
    ]


async def send(api: Api, op: Endpoint, path: str, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else msgspec.json.encode(body)
    extra = {"content-type": "application/json"} if op.body is not None else {}
    return await api.http.request(
        op.method,
        path,
        headers={**api.auth("admin"), **extra, **headers},
        content=content if op.body is not None else None,
    )


def body_or_none(op: Endpoint, world: dict[str, int]) -> Any:
    return valid_body(op, world) if op.body is not None else None


# ---------------------------------------------------------------- path ids
# Not in test_api_errors.BAD_PATH_IDS: other digits python's isdigit() takes, signs, spaces,
# separators, SQL, and numbers past bigint in both directions.
ODD_PATH_IDS = [
    "١٢٣",
    "１２３",
    "²",
    "৩",
    "+1",
    "-0",
    " 1",
    "1 ",
    "\t1",
    "1\n",
    "1\x00",
    "1_000",
    "1.0",
    "1,000",
    "1e3",
    "0x10",
    "0o7",
    "0b1",
    "18446744073709551616",
    "-9223372036854775808",
    "9" * 400,
    "NaN",
    "Infinity",
    "true",
    "null",
    "[1]",
    "1;DROP TABLE cards",
    "1' OR '1'='1",
    "1 OR 1=1",
    "$1",
    "%s",
    "1--",
    "1#",
    "\\x31",
]


@pytest.mark.parametrize("raw", ODD_PATH_IDS, ids=ascii)
@pytest.mark.parametrize("op", PATH_OPS, ids=op_label)
async def test_odd_path_ids_are_422_and_change_nothing(
    api: Api, snaps: Snapshots, world: dict[str, int], op: Endpoint, raw: str
) -> None:
    quoted = urllib.parse.quote(raw, safe="")
    path = fill_path(op, {name: quoted for name in op.path_ids()})
    async with snaps.unchanged():
        response = await send(api, op, path, body_or_none(op, world))
    body = assert_problem(response, 422, "VALIDATION_ERROR")
    assert body["field"] in op.path_ids()


@pytest.mark.parametrize("op", [op for op in PATH_OPS if op.method == "GET"], ids=op_label)
async def test_leading_zeros_are_decimal_not_octal(api: Api, world: dict[str, int], op: Endpoint) -> None:
    """'01' is the id 1 written with a zero, not octal and not another resource."""
    canonical = await api.http.get(fill_path(op, world), headers=api.auth("admin"))
    padded = await api.http.get(
        fill_path(op, {name: f"00{value}" for name, value in world.items()}), headers=api.auth("admin")
    )
    assert canonical.status_code == 200
    assert (padded.status_code, padded.json()) == (canonical.status_code, canonical.json())


# ---------------------------------------------------------------- integers in bodies
# Raw JSON spellings of an integer member: 400 when they are not JSON at all, else 422
# (1e999 is JSON but no float holds it: either answer will do).
INT_LITERALS: list[tuple[str, int | tuple[int, ...]]] = [
    ("1.0", 422),
    ("1e3", 422),
    ("1E3", 422),
    ("1000.000", 422),
    ("1e-3", 422),
    ("-0", 422),
    ("0", 422),
    ("-1", 422),
    ("1e999", (400, 422)),
    ("-1e999", (400, 422)),
    ('"1000"', 422),
    ('"1e3"', 422),
    ("true", 422),
    ("false", 422),
    ("[1000]", 422),
    ('{"$gt": 0}', 422),
    ("9223372036854775808", 422),
    ("-9223372036854775809", 422),
    ("18446744073709551616", 422),
    ("1" + "0" * 400, 422),
    ("NaN", 400),
    ("Infinity", 400),
    ("-Infinity", 400),
    ("0x10", 400),
    ("01000", 400),
    ("+1000", 400),
    (".5", 400),
    ("1.", 400),
    ("1_000", 400),
    ("'1000'", 400),
    ("1000 1", 400),
]


def _int_fields() -> list[tuple[Endpoint, str]]:
    found = []
    for op in BODY_OPS:
        for field in msgspec.inspect.type_info(op.body).fields:  # type: ignore[attr-defined]
            kind = field.type
            kinds = kind.types if isinstance(kind, msgspec.inspect.UnionType) else (kind,)
            if any(isinstance(getattr(k, "type", k), msgspec.inspect.IntType) for k in kinds):
                found.append((op, field.name))
    return found


@pytest.mark.parametrize(("literal", "status"), INT_LITERALS, ids=[ascii(lit[:20]) for lit, _ in INT_LITERALS])
@pytest.mark.parametrize(
    ("op", "field"), _int_fields(), ids=lambda value: op_label(value) if isinstance(value, Endpoint) else value
)
async def test_integer_members_spelled_oddly_are_refused(
    api: Api,
    snaps: Snapshots,
    world: dict[str, int],
    op: Endpoint,
    field: str,
    literal: str,
    status: int | tuple[int, ...],
) -> None:
    body = valid_body(op, world)
    body[field] = "@@HERE@@"
    raw = json.dumps(body).replace('"@@HERE@@"', literal).encode()
    async with snaps.unchanged():
        response = await send(api, op, fill_path(op, world), raw)
    if isinstance(status, tuple):
        assert response.status_code in status, response.text
        status = response.status_code
    assert_problem(response, status, "VALIDATION_ERROR" if status == 422 else "MALFORMED_JSON")


async def test_amount_boundaries_and_the_largest_bigint_id(api: Api, world: dict[str, int]) -> None:
    _, card = await make_user_with_card(api)
    for amount, balance in ((1, 1), (1_000_000, 1_000_001)):
        answer = json_body(
            await api.http.post(
                "/recharges", headers=api.auth("admin"), json={"card_id": card["card_id"], "amount": amount}
            ),
            201,
        )
        assert (answer["amount"], answer["balance"]) == (amount, balance)
    largest = 2**63 - 1
    assert_problem(
        await api.http.post("/recharges", headers=api.auth("admin"), json={"card_id": largest, "amount": 1}),
        404,
        "CARD_NOT_FOUND",
    )
    assert_problem(
        await api.http.post("/cards", headers=api.auth("admin"), json={"user_id": largest}), 404, "USER_NOT_FOUND"
    )


# ---------------------------------------------------------------- unicode, control characters
UNICODE = {
    "emoji": "Ana 👩🏽‍🚀🚇",
    "rtl": "مريم الحسيني",
    "hebrew_points": "שָׁלוֹם",
    "combining_nfd": "Jose\u0301 Man\u0303a",  # decomposed: must not come back composed
    "nfc": "José Maña",
    "zalgo": "Z\u0334\u0321\u0322a\u0335l\u0337g\u0336o\u0338",
    "cjk": "東京 太郎",
    "astral": "𝔄𝔫𝔞 𓂀",
    "zero_width": "Ana\u200bMar\u200dí\ufeffa",
    "rtl_mixed": "Calle 26 # 68-35 شارع",
    "hundred_emoji": "😀" * 100,
}
FREE_TEXT = ("first_name", "last_name", "residential_address", "city_of_birth")


@pytest.mark.parametrize("value", list(UNICODE.values()), ids=list(UNICODE))
@pytest.mark.parametrize("field", FREE_TEXT)
async def test_unicode_is_stored_and_answered_verbatim(
    api: Api, conn: asyncpg.Connection, field: str, value: str
) -> None:
    response = await api.http.post("/users", headers=api.auth("admin"), json=user_fields(**{field: value}))
    user = json_body(response, 201)
    assert user[field] == value
    stored = await conn.fetchrow(
        f"SELECT {field} AS text, convert_to({field}, 'UTF8') AS bytes FROM users WHERE user_id = $1", user["user_id"]
    )
    assert (stored["text"], stored["bytes"]) == (value, value.encode())


async def test_unicode_email_local_part_is_stored_verbatim(api: Api, conn: asyncpg.Connection) -> None:
    email = f"josé.ñandú.{time.time_ns()}@example.co"
    user = json_body(await api.http.post("/users", headers=api.auth("admin"), json=user_fields(email=email)), 201)
    assert user["email"] == email
    assert await conn.fetchval("SELECT email FROM users WHERE user_id = $1", user["user_id"]) == email
    assert any(
        latest["user_id"] == user["user_id"] and latest["email"] == email
        for latest in json_body(await api.http.get("/users/latest", headers=api.auth("admin")))
    )


# A valid value of every text member of every body, and where a control character goes into it.
TEXT_MEMBERS: list[tuple[str, str, str]] = [
    ("/users", "first_name", "Ana María"),
    ("/users", "last_name", "Rojas Díaz"),
    ("/users", "email", "ana.rojas@example.co"),
    ("/users", "id_number", "CC-12345678"),
    ("/users", "contact_number", "+57 300 123 4567"),
    ("/users", "gender", "FF"),
    ("/users", "date_of_birth", "1990-01-01"),
    ("/users", "residential_address", "Calle 26 # 68-35"),
    ("/users", "city_of_birth", "Bogotá"),
    ("/cards", "card_number", "1234567890"),
    ("PATCH", "status", "blocked"),
]
CONTROLS = [
    "\x00",
    "\x01",
    "\x08",
    "\x0b",
    "\x0c",
    "\x1b",
    "\x1f",
    "\x7f",
    "\n",
    "\r",
    "\t",
    "\x80",
    "\x85",
    "\x9b",
]  # the last three: C1 controls (NEL, CSI), category Cc too


@pytest.mark.parametrize("char", CONTROLS, ids=ascii)
@pytest.mark.parametrize(("where", "field", "good"), TEXT_MEMBERS, ids=[f"{w}.{f}" for w, f, _ in TEXT_MEMBERS])
async def test_control_characters_are_422_in_every_text_member(
    api: Api, snaps: Snapshots, world: dict[str, int], where: str, field: str, good: str, char: str
) -> None:
    middle = len(good) // 2
    value = good[:middle] + char + good[middle:] if field != "gender" else "F" + char
    if where == "/users":
        request = api.http.post("/users", headers=api.auth("admin"), json=user_fields(**{field: value}))
    elif where == "/cards":
        request = api.http.post("/cards", headers=api.auth("admin"), json={"user_id": world["user_id"], field: value})
    else:
        request = api.http.patch(f"/cards/{world['card_id']}", headers=api.auth("admin"), json={field: value})
    async with snaps.unchanged():
        response = await request
    assert_problem(response, 422, "VALIDATION_ERROR")


# ---------------------------------------------------------------- SQL metacharacters
SQL = [
    "'; DROP TABLE users; --",
    '" OR "1"="1',
    "' OR '1'='1",
    "\\'; DELETE FROM cards; --",
    "$1",
    "%s",
    "%(card_id)s",
    "$$; DROP TABLE cards; $$",
    "'); SELECT pg_sleep(3); --",
    "1; TRUNCATE recharges",
    "' UNION SELECT token_hash FROM write_tokens --",
    "\\\\'\\\"",
    "`id`; --",
]
USER_TEXT = (
    "first_name",
    "last_name",
    "email",
    "id_number",
    "contact_number",
    "residential_address",
    "city_of_birth",
    "gender",
    "date_of_birth",
)


async def assert_tables_intact(conn: asyncpg.Connection, tables: list[str]) -> None:
    present = [
        row["tablename"]
        for row in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1")
    ]
    assert present == tables
    assert await conn.fetchval("SELECT count(*) FROM write_tokens WHERE revoked_at IS NULL") >= 3


@pytest.mark.parametrize("payload", SQL, ids=ascii)
@pytest.mark.parametrize("field", [*USER_TEXT, "card_number", "status"])
async def test_sql_metacharacters_in_text_members_are_refused_or_stored_verbatim(
    api: Api,
    conn: asyncpg.Connection,
    snaps: Snapshots,
    tables: list[str],
    world: dict[str, int],
    field: str,
    payload: str,
) -> None:
    value = f"x{payload}@example.co" if field == "email" else payload
    before = await snaps.take()
    started = time.monotonic()
    if field == "card_number":
        response = await api.http.post(
            "/cards", headers=api.auth("admin"), json={"user_id": world["user_id"], field: value}
        )
    elif field == "status":
        response = await api.http.patch(f"/cards/{world['card_id']}", headers=api.auth("admin"), json={field: value})
    else:
        response = await api.http.post("/users", headers=api.auth("admin"), json=user_fields(**{field: value}))
    assert time.monotonic() - started < 2, "pg_sleep ran?"
    await assert_tables_intact(conn, tables)
    if response.status_code == 201:
        assert field in USER_TEXT and field not in ("gender", "date_of_birth"), response.text
        user = response.json()
        assert user[field] == value
        assert await conn.fetchval(f"SELECT {field} FROM users WHERE user_id = $1", user["user_id"]) == value
    else:
        assert_problem(response, 422, "VALIDATION_ERROR")
        assert await snaps.take() == before
    if field in FREE_TEXT:  # names and addresses must take them: O'Brien, "Calle 5 # 3-1; Int. 2"
        assert response.status_code == 201, response.text


@pytest.mark.parametrize("payload", SQL, ids=ascii)
async def test_sql_metacharacters_in_the_idempotency_key_are_just_a_key(
    api: Api, conn: asyncpg.Connection, tables: list[str], payload: str
) -> None:
    _, card = await make_user_with_card(api)
    headers = {**api.auth("recharge_point"), "Idempotency-Key": payload}
    body = {"card_id": card["card_id"], "amount": 1500}
    first = json_body(await api.http.post("/recharges", headers=headers, json=body), 201)
    again = await api.http.post("/recharges", headers=headers, json=body)
    assert json_body(again, 201) == first
    assert again.headers.get("idempotent-replayed") == "true"
    await assert_tables_intact(conn, tables)
    stored = await conn.fetch(
        "SELECT idempotency_key, recharge_id FROM idempotency_keys WHERE recharge_id = $1", first["recharge_id"]
    )
    assert [tuple(row) for row in stored] == [(payload, first["recharge_id"])]
    assert await conn.fetchval("SELECT balance FROM cards WHERE card_id = $1", card["card_id"]) == 1500


# ---------------------------------------------------------------- JSON edge cases
DEEP = 10_000


def json_edge_cases(op: Endpoint, world: dict[str, int]) -> list[tuple[str, bytes, tuple[int, ...]]]:
    good = json.dumps(valid_body(op, world))
    first = next(iter(valid_body(op, world)))
    inner = good[1:-1]
    return [
        ("deep arrays", b"[" * DEEP + b"]" * DEEP, (400, 422)),
        ("deep objects", b'{"a":' * DEEP + b"1" + b"}" * DEEP, (400, 422)),
        (
            "deep array in an unknown member",
            ('{%s, "x": ' % inner).encode() + b"[" * DEEP + b"]" * DEEP + b"}",
            (400, 422),
        ),
        ("deep array in a known member", ('{"%s": ' % first).encode() + b"[" * DEEP + b"]" * DEEP + b"}", (400, 422)),
        ("top-level array", b"[" + good.encode() + b"]", (422,)),
        ("top-level string", json.dumps(good).encode(), (422,)),
        ("top-level null", b"null", (422,)),
        ("top-level number", b"1", (422,)),
        ("top-level true", b"true", (422,)),
        ("bom prefix", b"\xef\xbb\xbf" + good.encode(), (400,)),
        ("utf-16", good.encode("utf-16"), (400,)),
        ("utf-16-be", good.encode("utf-16-be"), (400,)),
        ("utf-32", good.encode("utf-32"), (400,)),
        ("latin-1 byte in a string member", ('{"%s": "caf' % first).encode() + b'\xe9"}', (400, 422)),
        ("invalid utf-8 in a string member", ('{%s, "x": "' % inner).encode() + b'\xff\xfe"}', (400, 422)),
        ("invalid utf-8 in a member name", ('{%s, "' % inner).encode() + b'\xff": 1}', (400, 422)),
        ("overlong utf-8", ('{"%s": "' % first).encode() + b'\xc0\xaf"}', (400, 422)),
        ("utf-8 encoded surrogate", ('{"%s": "' % first).encode() + b'\xed\xa0\x80"}', (400, 422)),
        ("lone surrogate escape", ('{"%s": "\\ud800"}' % first).encode(), (400, 422)),
        ("reversed surrogate pair", ('{"%s": "\\ude00\\ud83d"}' % first).encode(), (400, 422)),
        ("NUL byte outside strings", good.encode() + b"\x00", (400,)),
        ("two documents", good.encode() + good.encode(), (400,)),
        ("trailing comma", good[:-1].encode() + b",}", (400,)),
        ("comment", b"/* hi */" + good.encode(), (400,)),
        ("single quotes", good.replace('"', "'").encode(), (400,)),
    ]


EDGE_NAMES = [
    name for name, _, _ in json_edge_cases(next(op for op in BODY_OPS if op.handler is create_recharge), {"card_id": 1})
]


@pytest.mark.parametrize("case", EDGE_NAMES)
@pytest.mark.parametrize("op", BODY_OPS, ids=op_label)
async def test_json_edge_cases_are_4xx_and_change_nothing(
    api: Api, snaps: Snapshots, world: dict[str, int], op: Endpoint, case: str
) -> None:
    _, raw, statuses = next(edge for edge in json_edge_cases(op, world) if edge[0] == case)
    async with snaps.unchanged():
        response = await send(api, op, fill_path(op, world), raw)
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    is_problem(response)


async def test_duplicate_members_are_read_one_way_only(api: Api, conn: asyncpg.Connection) -> None:
    """JSON leaves duplicate names to the parser. Whatever the server makes of them, the
    answer and the database must agree: no reading of one `amount` checked and another
    stored. (msgspec keeps the last, as Python's json does.)"""
    _, card = await make_user_with_card(api)
    raw = b'{"card_id": %d, "amount": 1000, "amount": 900000}' % card["card_id"]
    response = await api.http.post(
        "/recharges", headers={**api.auth("admin"), "content-type": "application/json"}, content=raw
    )
    balance = await conn.fetchval("SELECT balance FROM cards WHERE card_id = $1", card["card_id"])
    if response.status_code == 201:
        assert response.json()["amount"] == balance == 900_000
    else:
        assert_problem(response, response.status_code)
        assert response.status_code in (400, 422) and balance == 0


# ---------------------------------------------------------------- a slow oversized body
async def test_a_body_of_64_kib_plus_1_dribbled_in_small_chunks_is_413(
    api: Api, snaps: Snapshots, world: dict[str, int]
) -> None:
    valid = json.dumps({"card_id": world["card_id"], "amount": 500}).encode()
    oversized = valid + b" " * (64 * 1024 + 1 - len(valid))

    async def dribble() -> AsyncIterator[bytes]:
        for start in range(0, len(oversized), 512):
            yield oversized[start : start + 512]
            await asyncio.sleep(0.001)

    async with snaps.unchanged():
        response = await api.http.post(
            "/recharges", content=dribble(), headers={**api.auth("admin"), "content-type": "application/json"}
        )
    assert_problem(response, 413)
    # The connection pool recovers: the next request is served.
    assert json_body(await api.http.get(f"/cards/{world['card_id']}/balance"))["card_id"] == world["card_id"]
