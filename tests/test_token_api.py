"""Token management through the API (issue 11): POST /tokens shows a token once and stores its
sha256, GET /tokens never shows a secret or hash, DELETE /tokens/{id} revokes on every instance
at once (NOTIFY), and the last admin token cannot be revoked, even by two admins at once."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import asyncpg
import pytest

from tests.support.api import assert_problem, board, fetch, json_body, make_user_with_card, recharge, unchanged
from tests.support.db import connected, refusal
from tests.support.polling import eventually_async
from tests.support.stack import TOKENS, Api, serve_api
from travel import auth, models
from travel.startup.embedded import EmbeddedStack

pytestmark = pytest.mark.slow  # starts second instances to see revocations reach them: seconds


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def make_token(
    api: Api, role: str, label: str = "made in a test", *, as_token: str | None = None, **extra: Any
) -> dict[str, Any]:
    headers = bearer(as_token) if as_token else api.auth("admin")
    response = await api.http.post("/tokens", headers=headers, json={"role": role, "label": label, **extra})
    made = json_body(response, 201)
    assert response.headers["cache-control"] == "no-store"
    return made


async def live_tokens(api: Api) -> list[dict[str, Any]]:
    return json_body(await api.http.get("/tokens", headers=api.auth("admin")))


async def test_a_token_is_shown_once_listed_without_secret_and_revoked_at_once(api: Api) -> None:
    made = await make_token(api, "validator", "bus 42 validator")
    token = made.pop("token")
    assert len(token) >= 43 and made["role"] == "validator" and made["label"] == "bus 42 validator"
    assert made["recharge_point_id"] is None and made["last_used_at"] is None
    stored = await fetch(api, "SELECT token_hash FROM write_tokens WHERE token_id = $1", made["token_id"])
    assert bytes(stored[0]["token_hash"]) == hashlib.sha256(token.encode()).digest()

    _, card = await make_user_with_card(api, 10_000)
    json_body(
        await api.http.post(
            "/trips", headers=bearer(token), json={"card_id": card["card_id"], "route_id": 1, "boarding_station_id": 1}
        ),
        201,
    )
    response = await api.http.get("/tokens", headers=api.auth("admin"))
    listed = {row["token_id"]: row for row in json_body(response)}
    assert set(listed[made["token_id"]]) == set(models.TokenInfo.__struct_fields__)
    assert listed[made["token_id"]]["last_used_at"] >= made["created_at"]  # noted at its first use
    assert {row["role"] for row in listed.values()} == {"admin", "recharge_point", "validator"}
    for secret in (token, *TOKENS.values()):  # never a secret, nor its hash
        assert secret not in response.text
        assert hashlib.sha256(secret.encode()).hexdigest() not in response.text

    assert (await api.http.delete(f"/tokens/{made['token_id']}", headers=api.auth("admin"))).status_code == 204
    async with unchanged(api):  # this instance forgot it before answering: refused at once
        assert_problem(
            await api.http.post(
                "/trips",
                headers=bearer(token),
                json={"card_id": card["card_id"], "route_id": 1, "boarding_station_id": 1},
            ),
            401,
            "UNAUTHORIZED",
        )
    assert made["token_id"] not in {row["token_id"] for row in await live_tokens(api)}
    assert_problem(
        await api.http.delete(f"/tokens/{made['token_id']}", headers=api.auth("admin")), 404, "TOKEN_NOT_FOUND"
    )


async def test_a_recharge_point_token_names_an_existing_point_and_no_other_role_does(api: Api) -> None:
    count = "SELECT count(*) FROM write_tokens"
    before = (await fetch(api, count))[0][0]
    for body, status, code in (
        ({"role": "recharge_point", "label": "no point"}, 422, "VALIDATION_ERROR"),
        ({"role": "validator", "label": "with a point", "recharge_point_id": 1}, 422, "VALIDATION_ERROR"),
        ({"role": "admin", "label": "with a point", "recharge_point_id": 1}, 422, "VALIDATION_ERROR"),
        (
            {"role": "recharge_point", "label": "unknown point", "recharge_point_id": 99},
            404,
            "RECHARGE_POINT_NOT_FOUND",
        ),
        ({"role": "operator", "label": "unknown role"}, 422, "VALIDATION_ERROR"),
        ({"role": "validator", "label": ""}, 422, "VALIDATION_ERROR"),
        ({"role": "validator"}, 422, "VALIDATION_ERROR"),
    ):
        assert_problem(await api.http.post("/tokens", headers=api.auth("admin"), json=body), status, code)
    assert (await fetch(api, count))[0][0] == before

    point_two = (await make_token(api, "recharge_point", "Punto Tunal", recharge_point_id=2))["token"]
    _, card = await make_user_with_card(api)
    headers = bearer(point_two)
    answer = json_body(
        await api.http.post("/recharges", headers=headers, json={"card_id": card["card_id"], "amount": 5000}), 201
    )
    assert answer["recharge_point_id"] == 2
    assert_problem(
        await api.http.post(
            "/recharges", headers=headers, json={"card_id": card["card_id"], "amount": 5000, "recharge_point_id": 1}
        ),
        403,
        "FORBIDDEN",
    )


async def test_the_last_admin_token_cannot_be_revoked(api: Api) -> None:
    admins = [row for row in await live_tokens(api) if row["role"] == "admin"]
    assert len(admins) == 1
    assert_problem(
        await api.http.delete(f"/tokens/{admins[0]['token_id']}", headers=api.auth("admin")), 409, "LAST_ADMIN_TOKEN"
    )
    second = await make_token(api, "admin", "second admin")
    assert (
        await api.http.delete(f"/tokens/{admins[0]['token_id']}", headers=bearer(second["token"]))
    ).status_code == 204
    assert_problem(await api.http.get("/tokens", headers=api.auth("admin")), 401)
    assert_problem(
        await api.http.delete(f"/tokens/{second['token_id']}", headers=bearer(second["token"])), 409, "LAST_ADMIN_TOKEN"
    )  # not even itself
    assert [row["token_id"] for row in await live_tokens_as(api, second["token"]) if row["role"] == "admin"] == [
        second["token_id"]
    ]


async def live_tokens_as(api: Api, token: str) -> list[dict[str, Any]]:
    return json_body(await api.http.get("/tokens", headers=bearer(token)))


async def test_two_admins_revoking_each_other_at_once_leave_one(api: Api) -> None:
    first = await make_token(api, "admin", "first")
    second = await make_token(api, "admin", "second")
    conftest_admin = next(row for row in await live_tokens(api) if row["label"] == "admin")
    assert (
        await api.http.delete(f"/tokens/{conftest_admin['token_id']}", headers=bearer(first["token"]))
    ).status_code == 204

    # In SQL, deterministically: the second revocation waits for the first, then sees it.
    async with (
        connected(api.database_url) as one,
        connected(api.database_url) as other,
        connected(api.database_url) as observer,
    ):
        async with one.transaction():
            await one.execute("SELECT revoke_token($1)", first["token_id"])
            waiting = asyncio.create_task(
                refusal("TRC05", other.execute("SELECT revoke_token($1)", second["token_id"]))
            )

            async def second_waits() -> bool:  # on the first's lock
                assert not waiting.done()
                return bool(
                    await observer.fetchval(
                        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", other.get_server_pid()
                    )
                )

            await eventually_async(second_waits, 10, "the second revocation waits on the first's lock", every=0.01)
        assert await waiting == {"token_id": second["token_id"]}  # refused once the first committed
    rows = await fetch(api, "SELECT token_id FROM write_tokens WHERE role = 'admin' AND revoked_at IS NULL")
    assert [row["token_id"] for row in rows] == [second["token_id"]]

    # Over HTTP, many rounds: each survivor and a newcomer revoke each other at once.
    survivor = second
    for round_number in range(8):
        newcomer = await make_token(api, "admin", f"round {round_number}", as_token=survivor["token"])
        answers = await asyncio.gather(
            api.http.delete(f"/tokens/{newcomer['token_id']}", headers=bearer(survivor["token"])),
            api.http.delete(f"/tokens/{survivor['token_id']}", headers=bearer(newcomer["token"])),
        )
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses[0] == 204 and statuses[1] in (401, 409), statuses
        live = await fetch(api, "SELECT token_id FROM write_tokens WHERE role = 'admin' AND revoked_at IS NULL")
        assert len(live) == 1
        survivor = survivor if live[0]["token_id"] == survivor["token_id"] else newcomer


async def test_a_revocation_reaches_a_second_instance_at_once(
    api: Api, stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "TOKEN_CACHE_SECONDS", 3600.0)  # expiry cannot be what stops it
    made = await make_token(api, "recharge_point", "till 7", recharge_point_id=1)
    _, card = await make_user_with_card(api)
    async with serve_api(api.database_url, stack.redis.url) as second:
        await asyncio.wait_for(second.state["listener"].connected.wait(), 5)
        json_body(
            await second.http.post(
                "/recharges", headers=bearer(made["token"]), json={"card_id": card["card_id"], "amount": 1000}
            ),
            201,
        )
        cached = second.state["tokens"].entries
        assert auth.digest(made["token"]) in cached  # the second instance would trust it for an hour

        assert (await api.http.delete(f"/tokens/{made['token_id']}", headers=api.auth("admin"))).status_code == 204
        await eventually_async(  # the NOTIFY, well before any cache expiry
            lambda: auth.digest(made["token"]) not in cached,
            5,
            "the revocation reaches the second instance",
            every=0.01,
        )
        async with unchanged(api):
            assert_problem(
                await second.http.post(
                    "/recharges", headers=bearer(made["token"]), json={"card_id": card["card_id"], "amount": 1000}
                ),
                401,
            )
        # Other tokens stay cached and working.
        json_body(await recharge(second, card["card_id"], 1000, role="recharge_point"), 201)


async def test_a_lookup_that_raced_a_revocation_does_not_fill_the_cache(api: Api) -> None:
    made = await make_token(api, "validator", "racing")
    tokens: auth.TokenCache = api.state["tokens"]
    real_run = api.state["db"].run

    async def revoked_meanwhile(query: Any, *args: Any) -> Any:
        row = await real_run(query, *args)  # the token is still live when read...
        tokens.forget(made["token_id"])  # ...and its revocation is heard before the answer is used
        return row

    api.state["db"].run = revoked_meanwhile
    try:
        assert await tokens.caller(api.state["db"], made["token"]) is not None
    finally:
        del api.state["db"].run
    assert auth.digest(made["token"]) not in tokens.entries


async def test_revoking_an_unknown_or_odd_token_id(api: Api) -> None:
    for token_id, status in (("999999", 404), ("0", 422), (str(2**31), 422), ("x", 422)):
        assert_problem(await api.http.delete(f"/tokens/{token_id}", headers=api.auth("admin")), status)
    _, card = await make_user_with_card(api, 5000)
    json_body(await board(api, card["card_id"]), 201)  # nothing else was touched


async def test_sql_functions_refuse_what_the_api_would(database_url: str) -> None:
    async with connected(database_url) as conn:
        digest = hashlib.sha256(b"x").digest()
        assert await refusal(
            "TRN06", conn.fetch("SELECT * FROM create_token($1, 'recharge_point', 'x', 99)", digest)
        ) == {"recharge_point_id": 99}
        assert await refusal("TRN07", conn.execute("SELECT revoke_token(424242)")) == {"token_id": 424242}
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.fetch("SELECT * FROM create_token($1, 'recharge_point', 'x', NULL)", digest)
