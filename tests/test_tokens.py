"""Write tokens (issue 5): stored hashed, looked up by digest, roles enforced on every guarded
operation of server.ENDPOINTS with tokens made through POST /tokens, a revocation that bypasses
the API (no NOTIFY) effective once the token cache expires, no secret in the logs."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

import server
from tests.support.api import (
    SITP_FARE,
    assert_problem,
    board,
    execute,
    json_body,
    make_user_with_card,
    recharge,
    snapshot,
    unchanged,
    user_fields,
)
from tests.support.hostile import GUARDED, ROLES, fill_path, op_label, valid_body
from tests.support.stack import TOKENS, Api, module_api, serve_api
from travel import auth
from travel.database import QUERIES
from travel.endpoints.declaration import Access, Endpoint
from travel.startup.embedded import EmbeddedStack
from travel.startup.processes import free_port

PUBLIC_READS = [op for op in server.ENDPOINTS if not op.guarded]


# ---------------------------------------------------------------- stored hashed
async def database_dump(conn: asyncpg.Connection) -> str:
    """Every row of every table of the schema, as text (bytea shows as hex)."""
    tables = [
        row["tablename"]
        for row in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1")
    ]
    assert "write_tokens" in tables
    parts = []
    for table in tables:
        rows = await conn.fetchval(f"SELECT string_agg(t::text, E'\\n') FROM \"{table}\" t")
        parts.append(f"-- {table}\n{rows or ''}")
    return "\n".join(parts)


async def test_tokens_are_stored_as_sha256_digests_and_their_text_nowhere(
    stack: EmbeddedStack, template_url: str
) -> None:
    admin_token = "env-admin-token-" + "Zq9" * 10  # as ADMIN_TOKEN would give it
    async with module_api(stack, "tokens", admin_token=admin_token) as api:
        every = {**TOKENS, "env_admin": admin_token}
        # Use each token for a write (and the env one too), so that any path that could keep it has run.
        _, card = await make_user_with_card(api, 10_000)
        for role in ("admin", "recharge_point"):
            json_body(await recharge(api, card["card_id"], 100, role=role, key=f"key-{role}"), 201)
        json_body(await board(api, card["card_id"]), 201)
        env_headers = {"Authorization": f"Bearer {admin_token}"}
        json_body(
            await api.http.post("/recharges", headers=env_headers, json={"card_id": card["card_id"], "amount": 100}),
            201,
        )
        assert_problem(
            await api.http.post(
                "/recharges",
                headers={"Authorization": "Bearer never-registered-token"},
                json={"card_id": card["card_id"], "amount": 100},
            ),
            401,
        )

        conn = await asyncpg.connect(api.database_url)
        try:
            stored = await conn.fetch("SELECT token_hash, role FROM write_tokens ORDER BY token_id")
            digests = {bytes(row["token_hash"]) for row in stored}
            assert all(len(bytes(row["token_hash"])) == 32 for row in stored)
            for name, token in every.items():
                assert hashlib.sha256(token.encode()).digest() in digests, name
            dump = await database_dump(conn)
        finally:
            await conn.close()
        assert len(dump) > 1000  # the dump holds the data: the search below means something
        for name, token in {**every, "unknown": "never-registered-token"}.items():
            for form in (token, token.encode().hex(), urllib.parse.quote(token)):
                assert form not in dump, (name, form)

        # Nor does the cache hold one.
        redis = aioredis.Redis.from_url(stack.redis.url)
        try:
            cached = b""
            async for key in redis.scan_iter(count=1000):
                value = await redis.get(key) if await redis.type(key) == b"string" else b""
                cached += key + b"\n" + (value or b"") + b"\n"
        finally:
            await redis.aclose()
        assert cached  # something was cached while the tokens were used
        for token in every.values():
            assert token.encode() not in cached


# ---------------------------------------------------------------- the comparison path
async def test_the_lookup_key_is_the_sha256_digest_and_the_scheme_is_compared_with_compare_digest(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why this is constant-time where it matters.

    The database (a btree on token_hash) and the in-process cache (a dict) both find a token
    by its sha256 digest, never by its text. A lookup that stops at the first differing byte
    leaks how long a prefix of the *searched key* matches a stored one. Here the searched key
    is a digest: an attacker chooses the token, but cannot choose a token whose digest shares
    a given prefix with a stored digest (that is a preimage search on sha256), and learning
    that prefix tells nothing about the token's text. So the time of the lookup does not
    depend on how much of a real token the guess gets right. The text that is compared
    directly, the scheme ("Bearer"), goes through hmac.compare_digest, and a refusal is the
    same 401 whether the token is unknown, revoked or half right.
    """
    db = api.state["db"]
    calls: list[tuple[str, tuple[Any, ...]]] = []
    real_run = db.run

    async def spy_run(query: Any, *args: Any) -> Any:
        calls.append((query.name, args))
        return await real_run(query, *args)

    compared: list[tuple[Any, Any]] = []
    real_compare = hmac.compare_digest

    def spy_compare(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(db, "run", spy_run)
    monkeypatch.setattr(hmac, "compare_digest", spy_compare)  # what auth.py calls
    _, card = await make_user_with_card(api, 1000)
    token = TOKENS["recharge_point"]
    api.state["tokens"].entries.clear()  # make the next request look the token up
    calls.clear()
    json_body(await recharge(api, card["card_id"], 500, role="recharge_point"), 201)
    lookups = [args for name, args in calls if name == "token-by-hash"]
    assert lookups == [(hashlib.sha256(token.encode()).digest(),)]
    assert "token_hash = $1" in " ".join(QUERIES["token-by-hash"].sql.split())
    for _, args in calls:  # the token's text never reaches the database
        assert all(token not in repr(arg) for arg in args)
    assert (b"bearer", b"bearer") in compared

    # Wrong in the first byte or in the last: the same answer.
    answers = []
    for guess in ("X" + token[1:], token[:-1] + "X", token + "X", token[: len(token) // 2]):
        response = await api.http.post(
            "/recharges", headers={"Authorization": f"Bearer {guess}"}, json={"card_id": card["card_id"], "amount": 500}
        )
        answers.append((response.status_code, response.json()["code"], response.headers["www-authenticate"]))
    assert len(set(answers)) == 1 and answers[0][:2] == (401, "UNAUTHORIZED")
    # Cached tokens are keyed by digest too: no token text kept in the process either.
    cached = api.state["tokens"].entries
    assert hashlib.sha256(token.encode()).digest() in cached  # not vacuous: the token is cached
    assert all(isinstance(key, bytes) and len(key) == 32 for key in cached)


# ---------------------------------------------------------------- roles, derived from OPERATIONS
@pytest.fixture(scope="module")
async def shared(stack: EmbeddedStack, template_url: str) -> AsyncIterator[Api]:
    async with module_api(stack, "roles") as running:
        yield running


@pytest.fixture(scope="module")
async def made_tokens(shared: Api) -> dict[str, dict[str, str]]:
    """Authorization headers of one token per role, made through POST /tokens (the recharge
    point's at point 1) with the test admin token (tests/support/stack.py): the role matrix runs on these."""
    headers = {}
    for role in ROLES:
        point = {"recharge_point_id": 1} if role == "recharge_point" else {}
        made = json_body(
            await shared.http.post(
                "/tokens", headers=shared.auth("admin"), json={"role": role, "label": f"matrix {role}", **point}
            ),
            201,
        )
        headers[role] = {"Authorization": f"Bearer {made['token']}"}
    return headers


async def fresh_ids(api: Api) -> dict[str, int]:
    """A user, a funded active card, an open trip and a token of its own, for one attempt."""
    user, card = await make_user_with_card(api, 20 * SITP_FARE)
    trip = json_body(await board(api, card["card_id"]), 201)
    token = json_body(
        await api.http.post("/tokens", headers=api.auth("admin"), json={"role": "validator", "label": "to revoke"}), 201
    )
    return {
        "user_id": user["user_id"],
        "card_id": card["card_id"],
        "trip_id": trip["trip_id"],
        "token_id": token["token_id"],
    }


@pytest.mark.parametrize("op", GUARDED, ids=op_label)
async def test_every_guarded_operation_admits_exactly_admin_and_its_roles(
    shared: Api, made_tokens: dict[str, dict[str, str]], op: Endpoint
) -> None:
    """Writes, token management and the reads that name a person (docs/design.md: who may read what): no token is 401
    with a WWW-Authenticate challenge, another role 403, and a refusal changes nothing."""
    api = shared
    answers: dict[str | None, tuple[int, str | None]] = {}
    for role in (None, *ROLES):
        ids = await fresh_ids(api)
        before = await snapshot(api)
        response = await api.http.request(
            op.method,
            fill_path(op, ids),
            headers=made_tokens[role] if role else {},
            json=valid_body(op, ids) if op.body is not None else None,
        )
        body = response.json() if response.content else None
        answers[role] = (response.status_code, body.get("code") if response.status_code >= 400 else None)
        if response.status_code >= 400:
            assert await snapshot(api) == before, (role, body)
            assert "@example.co" not in response.text, response.text  # no personal data in a refusal
        if role is None:
            assert response.headers["www-authenticate"] == "Bearer"
    allowed = {"admin", *op.roles}
    expected = {
        role: (op.status, None) if role in allowed else (401, "UNAUTHORIZED") if role is None else (403, "FORBIDDEN")
        for role in (None, *ROLES)
    }
    assert answers == expected
    if op.access is Access.ADMIN:  # administration: neither a recharge point nor a validator
        assert answers["recharge_point"] == answers["validator"] == (403, "FORBIDDEN")


@pytest.mark.parametrize("op", PUBLIC_READS, ids=op_label)
async def test_public_reads_need_no_token_and_ignore_a_bad_one(shared: Api, op: Endpoint) -> None:
    api = shared
    ids = await fresh_ids(api)
    path = fill_path(op, ids)
    plain = await api.http.get(path)
    assert plain.status_code == 200, plain.text
    bogus = await api.http.get(path, headers={"Authorization": "Bearer not-a-token"})
    assert bogus.status_code == 200, bogus.text


# ---------------------------------------------------------------- revocation
async def revoke(api: Api, role: str) -> None:
    await execute(
        api,
        "UPDATE write_tokens SET revoked_at = now() WHERE token_hash = $1",
        hashlib.sha256(TOKENS[role].encode()).digest(),
    )


@pytest.mark.slow  # waits out the token cache's lifetime
async def test_a_revoked_token_stops_working_when_the_token_cache_expires(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "TOKEN_CACHE_SECONDS", 0.5)
    _, card = await make_user_with_card(api, 10 * SITP_FARE)
    api.state["tokens"].entries.clear()
    json_body(await board(api, card["card_id"]), 201)  # the validator's token is now cached
    await revoke(api, "validator")
    await asyncio.sleep(0.6)  # past TOKEN_CACHE_SECONDS: the expiry under test, not a synchronisation
    async with unchanged(api):
        assert_problem(await board(api, card["card_id"]), 401, "UNAUTHORIZED")
    # The other tokens are untouched.
    json_body(await recharge(api, card["card_id"], 1000, role="recharge_point"), 201)


async def test_a_revoked_token_is_refused_at_once_once_the_cache_is_cleared(api: Api) -> None:
    _, card = await make_user_with_card(api, 1000)
    json_body(await recharge(api, card["card_id"], 1000, role="recharge_point", key="before"), 201)
    await revoke(api, "recharge_point")
    api.state["tokens"].entries.clear()  # what TOKEN_CACHE_SECONDS does, at once
    async with unchanged(api):
        assert_problem(await recharge(api, card["card_id"], 1000, role="recharge_point"), 401, "UNAUTHORIZED")
        # Not even a replay of a key it used before the revocation.
        assert_problem(await recharge(api, card["card_id"], 1000, role="recharge_point", key="before"), 401)


async def test_with_no_token_cache_a_revocation_is_immediate(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "TOKEN_CACHE_SECONDS", 0)
    user, _ = await make_user_with_card(api)
    await revoke(api, "admin")
    async with unchanged(api):
        assert_problem(
            await api.http.post("/cards", headers=api.auth("admin"), json={"user_id": user["user_id"]}),
            401,
            "UNAUTHORIZED",
        )


# ---------------------------------------------------------------- no secret in the logs
SERVER_LOGGERS = (
    "travel",
    "travel.api",
    "travel.db",
    "travel.cache",
    "travel.errors",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "asyncpg",
    "starlette",
)


async def test_no_token_body_value_or_password_reaches_the_logs(
    stack: EmbeddedStack, database_url: str, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    for name in SERVER_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    secrets = {
        "email": "s3cr3t.mailbox.q7@example.co",
        "id_number": "SECRETID4242",
        "first_name": "Xiomara Secretname",
        "last_name": "Uniquesurname",
        "address": "Calle Secreta 77-7",
        "phone": "+57 311 999 8877",
        "unknown token": "leaked-bearer-token-9f8e7d",
        "idempotency key": "receipt-secret-5150",
    }
    async with serve_api(database_url, stack.redis.url) as api:
        for name in SERVER_LOGGERS:  # uvicorn.Config reset its own levels
            caplog.set_level(logging.DEBUG, logger=name)
        fields = user_fields(
            email=secrets["email"],
            id_number=secrets["id_number"],
            first_name=secrets["first_name"],
            last_name=secrets["last_name"],
            residential_address=secrets["address"],
            contact_number=secrets["phone"],
        )
        user = json_body(await api.http.post("/users", headers=api.auth("admin"), json=fields), 201)
        assert_problem(await api.http.post("/users", headers=api.auth("admin"), json=fields), 409, "ALREADY_EXISTS")
        assert_problem(
            await api.http.post(
                "/users", headers=api.auth("admin"), json={**fields, "first_name": secrets["first_name"] + "\x00"}
            ),
            422,
        )
        assert_problem(await api.http.post("/users", headers=api.auth("validator"), json=fields), 403)
        refused = await api.http.post(
            "/users", headers={"Authorization": f"Bearer {secrets['unknown token']}"}, json=fields
        )
        assert_problem(refused, 401)
        assert secrets["unknown token"] not in refused.text
        card = json_body(
            await api.http.post("/cards", headers=api.auth("admin"), json={"user_id": user["user_id"]}), 201
        )
        key = {"Idempotency-Key": secrets["idempotency key"]}
        json_body(
            await api.http.post(
                "/recharges",
                headers={**api.auth("recharge_point"), **key},
                json={"card_id": card["card_id"], "amount": 1000},
            ),
            201,
        )
        assert_problem(
            await api.http.post(
                "/recharges",
                headers={**api.auth("recharge_point"), **key},
                json={"card_id": card["card_id"], "amount": 2000},
            ),
            422,
            "IDEMPOTENCY_KEY_REUSED",
        )
        assert_problem(await board(api, card["card_id"]), 402, "INSUFFICIENT_BALANCE")
        json_headers = {**api.auth("validator"), "content-type": "application/json"}
        assert_problem(
            await api.http.post(
                "/trips", headers=json_headers, content=b'{"card_id": "' + secrets["email"].encode() + b'"'
            ),
            400,
        )
        assert_problem(
            await api.http.post(
                "/recharges", headers=api.auth("recharge_point"), json={"card_id": 987654321, "amount": 1000}
            ),
            404,
        )
    # And with the cache unreachable (its errors are logged): same URL and password, no server.
    dead_redis = stack.redis.url.replace(f":{stack.redis.port}/", f":{free_port()}/")
    async with serve_api(database_url, dead_redis) as api:
        for name in SERVER_LOGGERS:
            caplog.set_level(logging.DEBUG, logger=name)
        json_body(await api.http.get(f"/cards/{card['card_id']}/balance"))
        json_body(
            await api.http.post(
                "/recharges",
                headers={**api.auth("recharge_point"), "Idempotency-Key": "k2"},
                json={"card_id": card["card_id"], "amount": 1000},
            ),
            201,
        )
    text = caplog.text + "\n".join(record.getMessage() for record in caplog.records)
    assert any(record.name == "travel.cache" for record in caplog.records), "the capture is not working"
    database_password = urllib.parse.urlparse(database_url).password
    redis_password = urllib.parse.urlparse(stack.redis.url).password
    assert database_password and redis_password
    leaked = {
        name: value
        for name, value in {
            **secrets,
            **{f"{role} token": token for role, token in TOKENS.items()},
            "database password": database_password,
            "redis password": redis_password,
        }.items()
        if value in text
    }
    assert leaked == {}, text[-3000:]


class CountingDatabase:
    """A Database stand-in for TokenCache: the tokens it knows, and how many lookups it ran."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known = {auth.digest(token): role for token, role in known.items()}
        self.lookups = 0

    async def run(self, _query: object, key: bytes) -> dict[str, Any] | None:
        self.lookups += 1
        role = self.known.get(key)
        return None if role is None else {"token_id": 7, "role": role, "recharge_point_id": None}


async def test_an_unknown_token_is_looked_up_once_and_a_new_token_is_heard_of_at_once() -> None:
    database = CountingDatabase({})
    tokens = auth.TokenCache()
    for _ in range(3):
        assert await tokens.caller(database, "not-yet", "192.0.2.1") is None  # type: ignore[arg-type]
    assert database.lookups == 1  # cached as unknown
    database.known[auth.digest("not-yet")] = "admin"
    tokens.forget(auth.CREATED)  # the `write_tokens` NOTIFY of register_token / create_token
    caller = await tokens.caller(database, "not-yet", "192.0.2.1")  # type: ignore[arg-type]
    assert caller is not None and caller.role == "admin" and database.lookups == 2


async def test_an_address_past_its_failures_gets_429_without_a_lookup_but_its_valid_token_works() -> None:
    database = CountingDatabase({"valid": "admin"})
    tokens = auth.TokenCache(failures=auth.FailedAuthentications(limit=5))
    assert await tokens.caller(database, "valid", "192.0.2.1") is not None  # type: ignore[arg-type]
    for attempt in range(5):
        assert await tokens.caller(database, f"wrong-{attempt}", "192.0.2.1") is None  # type: ignore[arg-type]
    lookups = database.lookups
    with pytest.raises(auth.TooManyFailures) as refused:
        await tokens.caller(database, "wrong-again", "192.0.2.1")  # type: ignore[arg-type]
    assert refused.value.status == 429 and 1 <= int(refused.value.headers["Retry-After"]) <= 60
    assert database.lookups == lookups  # refused without a query
    assert await tokens.caller(database, "valid", "192.0.2.1") is not None  # type: ignore[arg-type]
    tokens.entries = {key: (0.0, caller) for key, (_, caller) in tokens.entries.items()}  # all expired
    assert await tokens.caller(database, "valid", "192.0.2.1") is not None  # type: ignore[arg-type]
    assert await tokens.caller(database, "wrong-0", "198.51.100.9") is None  # type: ignore[arg-type]
    # A live token never seen here passes too: the listener told of its creation.
    database.known[auth.digest("new")] = "validator"
    with pytest.raises(auth.TooManyFailures):
        await tokens.caller(database, "new", "192.0.2.1")  # type: ignore[arg-type]
    tokens.forget(f"{auth.CREATED}:8:{auth.digest('new').hex()}")
    assert await tokens.caller(database, "new", "192.0.2.1") is not None  # type: ignore[arg-type]
    tokens.forget(8)  # revoked: no longer live
    assert auth.digest("new") not in tokens.live
    tokens.failures.window_start -= auth.FAILURE_WINDOW_SECONDS  # a minute later
    assert await tokens.caller(database, "wrong-again", "192.0.2.1") is None  # type: ignore[arg-type]
