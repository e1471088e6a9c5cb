"""Every refusal of docs/design.md: who may read what over HTTP: status, `code`, problem+json, and a database that
the refused write left exactly as it was."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx

from tests.support.api import (
    PROBLEM_JSON,
    SITP_FARE,
    TRANSFER_FARE,
    assert_problem,
    balance_in_db,
    board,
    end_trip,
    fetchval,
    json_body,
    make_card,
    make_user,
    make_user_with_card,
    raw_json,
    recharge,
    set_status,
    snapshot,
    unchanged,
    user_fields,
)
from tests.support.stack import Api

BIGINT_PAST = 9223372036854775808  # 2**63: one past bigint
BAD_IDS: list[Any] = [0, -1, "1", 1.5, True, None, BIGINT_PAST, 10**30]
BAD_PATH_IDS = ["0", "-1", "abc", "1.5", "1e3", "%201", "0x10", str(BIGINT_PAST), "99999999999999999999999", "١"]


async def refused_all(
    api: Api, status: int, code: str, requests: Sequence[tuple[str, Callable[..., Awaitable[httpx.Response]]]]
) -> None:
    """Each request is refused with (status, code) and changes nothing; reports every case that is not."""
    wrong = {}
    before = await snapshot(api)
    for label, send in requests:
        response = await send()
        try:
            answer_code = response.json().get("code")
        except ValueError:
            answer_code = None
        if (response.status_code, response.headers.get("content-type"), answer_code) != (status, PROBLEM_JSON, code):
            wrong[label] = (response.status_code, response.text[:200])
    assert wrong == {}
    assert await snapshot(api) == before


def post(
    api: Api, path: str, body: Any, role: str = "admin", **headers: str
) -> Callable[[], Awaitable[httpx.Response]]:
    content = body if isinstance(body, bytes) else raw_json(body)
    return lambda: api.http.post(
        path, headers={**api.auth(role), "content-type": "application/json", **headers}, content=content
    )


# ---------------------------------------------------------------- 400, 422
async def test_a_body_that_is_not_json_is_400_malformed_json(api: Api) -> None:
    _user, card = await make_user_with_card(api, 5000)
    trip = json_body(await board(api, card["card_id"]), 201)
    writes = [
        ("POST", "/users"),
        ("POST", "/cards"),
        ("PATCH", f"/cards/{card['card_id']}"),
        ("POST", "/recharges"),
        ("POST", "/trips"),
        ("POST", f"/trips/{trip['trip_id']}/end"),
    ]
    bodies = [b"", b"{", b"not json", b"{'card_id': 1}", b"\xff\xfe{}", b"nul", b'"unterminated', b"{,}"]
    await refused_all(
        api,
        400,
        "MALFORMED_JSON",
        [
            (
                f"{method} {path} {body!r}",
                lambda method=method, path=path, body=body: api.http.request(
                    method, path, headers={**api.auth("admin"), "content-type": "application/json"}, content=body
                ),
            )
            for method, path in writes
            for body in bodies
        ],
    )


async def test_a_body_that_is_not_json_is_400_even_when_its_start_breaks_the_schema(api: Api) -> None:
    """msgspec stops at the first problem it meets: a body that is not JSON must still be 400,
    not 422, when a member before the syntax error already does not fit the Struct."""
    _, card = await make_user_with_card(api, 5000)
    await refused_all(
        api,
        400,
        "MALFORMED_JSON",
        [
            (repr(body), post(api, "/recharges", body))
            for body in (
                b'{"card_id": %d, "amount": 1000, "extra": 1,}' % card["card_id"],
                b'{"card_id": %d} trailing' % card["card_id"],
                b'{"amount": "x"',
                b"[1,",
                b'{"card_id": 1, "amount": 1000, "card_id": }',
            )
        ],
    )


async def test_recharge_bodies_that_do_not_fit_are_422(api: Api) -> None:
    _, card = await make_user_with_card(api, 5000)
    card_id = card["card_id"]
    bodies: list[Any] = [
        {"card_id": card_id},
        {"amount": 1000},
        {},
        [],
        None,
        "recharge",
        1000,
        {"card_id": card_id, "amount": 100.5},
        {"card_id": card_id, "amount": 100.0},
        {"card_id": card_id, "amount": 0},
        {"card_id": card_id, "amount": -1000},
        {"card_id": card_id, "amount": 1_000_001},
        {"card_id": card_id, "amount": "1000"},
        {"card_id": card_id, "amount": True},
        {"card_id": card_id, "amount": None},
        {"card_id": card_id, "amount": 10**30},
        {"card_id": card_id, "amount": 1e3},
        {"card_id": card_id, "amount": 1000, "balance": 99_999},  # unknown extra member
        {"card_id": card_id, "amount": 1000, "recharge_point_id": 0},
        {"card_id": card_id, "amount": 1000, "recharge_point_id": 2**31},
        {"card_id": card_id, "amount": 1000, "recharge_point_id": "1"},
        *({"card_id": bad, "amount": 1000} for bad in BAD_IDS),
    ]
    await refused_all(api, 422, "VALIDATION_ERROR", [(repr(body), post(api, "/recharges", body)) for body in bodies])
    assert await balance_in_db(api, card_id) == 5000


async def test_trip_and_card_bodies_that_do_not_fit_are_422(api: Api) -> None:
    user, card = await make_user_with_card(api, 5000)
    card_id = card["card_id"]
    trip = json_body(await board(api, card_id), 201)
    good_board = {"card_id": card_id, "route_id": 1, "boarding_station_id": 1}
    cases: list[tuple[str, Any]] = [
        *(("/trips", {**good_board, field: bad}) for field in good_board for bad in BAD_IDS),
        *(("/trips", {k: v for k, v in good_board.items() if k != field}) for field in good_board),
        ("/trips", {**good_board, "fare": 0}),
        ("/trips", {**good_board, "route_id": 2**31}),
        *((f"/trips/{trip['trip_id']}/end", {"disembarking_station_id": bad}) for bad in BAD_IDS),
        (f"/trips/{trip['trip_id']}/end", {}),
        (f"/trips/{trip['trip_id']}/end", {"disembarking_station_id": 2, "x": 1}),
        *(("/cards", {"user_id": bad}) for bad in BAD_IDS),
        ("/cards", {}),
        ("/cards", {"user_id": user["user_id"], "card_number": "1234"}),
        ("/cards", {"user_id": user["user_id"], "card_number": "12345678abc"}),
        ("/cards", {"user_id": user["user_id"], "card_number": 12345678}),
        ("/cards", {"user_id": user["user_id"], "card_number": "1" * 21}),
        ("/cards", {"user_id": user["user_id"], "status": "active"}),
    ]
    requests = [(f"{path} {body!r}", post(api, path, body)) for path, body in cases]
    requests += [
        (
            f"PATCH {body!r}",
            functools.partial(api.http.patch, f"/cards/{card_id}", headers=api.auth("admin"), json=body),
        )
        for body in (
            {},
            {"status": "stolen"},
            {"status": "ACTIVE"},
            {"status": None},
            {"status": 1},
            {"status": "blocked", "balance": 0},
        )
    ]
    await refused_all(api, 422, "VALIDATION_ERROR", requests)


async def test_user_bodies_that_do_not_fit_are_422(api: Api) -> None:
    cases: list[dict[str, Any]] = [
        *({k: v for k, v in user_fields().items() if k != field} for field in user_fields()),
        user_fields(first_name="Ana\x00"),
        user_fields(first_name="\x00"),
        user_fields(last_name="Ro\x01jas"),
        user_fields(first_name="Ana\tMaría"),
        user_fields(last_name="Rojas\x1b[31m"),
        user_fields(first_name="Ana\x7f"),
        user_fields(city_of_birth="Bogo\x00tá"),
        user_fields(residential_address="Calle 1\r\nX-Injected: yes"),
        user_fields(first_name=""),
        user_fields(first_name="A" * 101),
        user_fields(first_name=7),
        user_fields(first_name=None),
        user_fields(email="no-at-sign"),
        user_fields(email="a@b"),
        user_fields(email="a b@example.co"),
        user_fields(email="a@@example.co"),
        user_fields(email=""),
        user_fields(email="a\x00@example.co"),
        user_fields(email="a" * 250 + "@example.co"),
        user_fields(id_number="abc"),
        user_fields(id_number="12 34"),
        user_fields(id_number="1234'--"),
        user_fields(id_number="1" * 21),
        user_fields(gender="X"),
        user_fields(date_of_birth="1990-13-01"),
        user_fields(date_of_birth="yesterday"),
        user_fields(contact_number="call me"),
        user_fields(nickname="Cami"),
    ]
    await refused_all(api, 422, "VALIDATION_ERROR", [(repr(body), post(api, "/users", body)) for body in cases])


async def test_a_trailing_newline_does_not_slip_past_validation(api: Api) -> None:
    """Python's `$` matches before a final newline: the patterns of models.text() must not let
    "Ana\\n" (a control character) through, nor send "ABCD\\n" on to a CHECK that answers 500."""
    user = await make_user(api)
    await refused_all(
        api,
        422,
        "VALIDATION_ERROR",
        [
            ("first_name", post(api, "/users", user_fields(first_name="Ana\n"))),
            ("email", post(api, "/users", user_fields(email="ana@example.co\n"))),
            ("id_number", post(api, "/users", user_fields(id_number="ABCD1234\n"))),
            ("contact_number", post(api, "/users", user_fields(contact_number="+57 300\n"))),
            ("card_number", post(api, "/cards", {"user_id": user["user_id"], "card_number": "12345678\n"})),
        ],
    )


async def test_a_date_of_birth_the_database_refuses_is_422_not_500(api: Api) -> None:
    """users.date_of_birth has CHECK (> 1900-01-01); the body must be refused before it."""
    await refused_all(
        api,
        422,
        "VALIDATION_ERROR",
        [(day, post(api, "/users", user_fields(date_of_birth=day))) for day in ("1899-12-31", "0001-01-01")],
    )


async def test_path_ids_that_are_not_positive_bigints_are_422(api: Api) -> None:
    requests = []
    for bad in BAD_PATH_IDS:
        for path in (f"/cards/{bad}/balance", f"/trips/{bad}", f"/trips/card/{bad}", f"/users/{bad}/recharges"):
            requests.append((path, lambda path=path: api.http.get(path, headers=api.auth("admin"))))
        requests.append(
            (
                f"PATCH {bad}",
                lambda bad=bad: api.http.patch(f"/cards/{bad}", headers=api.auth("admin"), json={"status": "lost"}),
            )
        )
        requests.append(
            (
                f"end {bad}",
                lambda bad=bad: api.http.post(
                    f"/trips/{bad}/end", headers=api.auth("admin"), json={"disembarking_station_id": 1}
                ),
            )
        )
    await refused_all(api, 422, "VALIDATION_ERROR", requests)
    # The largest bigint is a valid id, of nothing.
    assert_problem(await api.http.get("/cards/9223372036854775807/balance"), 404, "CARD_NOT_FOUND")
    assert_problem(await api.http.get("/trips/9223372036854775807"), 404, "TRIP_NOT_FOUND")


async def test_bad_idempotency_keys_are_422(api: Api) -> None:
    _, card = await make_user_with_card(api, 1000)
    body = {"card_id": card["card_id"], "amount": 500}
    await refused_all(
        api,
        422,
        "VALIDATION_ERROR",
        [
            ("256 chars", post(api, "/recharges", body, **{"Idempotency-Key": "k" * 256})),
            ("empty", post(api, "/recharges", body, **{"Idempotency-Key": ""})),
            (
                "latin-1",
                lambda: api.http.post(
                    "/recharges",
                    json=body,
                    headers=[*api.auth("admin").items(), ("Idempotency-Key", b"caf\xe9")],  # type: ignore[arg-type]
                ),
            ),
        ],
    )
    longest = await recharge(api, card["card_id"], 500, key="k" * 255)
    assert json_body(longest, 201)["balance"] == 1500


# ---------------------------------------------------------------- 401, 403
async def test_missing_or_unknown_tokens_are_401(api: Api) -> None:
    _, card = await make_user_with_card(api, 1000)
    body = raw_json({"card_id": card["card_id"], "amount": 500})
    headers: list[dict[str, str]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Authorization": "admin-token-for-tests"},
        {"Authorization": "Token admin-token-for-tests"},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Bearer admin-token-for-tests-and-more"},
    ]
    before = await snapshot(api)
    for header in headers:
        response = await api.http.post(
            "/recharges", content=body, headers={**header, "content-type": "application/json"}
        )
        assert_problem(response, 401, "UNAUTHORIZED")
        assert response.headers["www-authenticate"].startswith("Bearer"), header
    assert await snapshot(api) == before
    lower_scheme = await api.http.post(
        "/recharges",
        content=body,
        headers={"Authorization": "bearer admin-token-for-tests", "content-type": "application/json"},
    )
    assert json_body(lower_scheme, 201)["balance"] == 1500


async def test_tokens_of_another_role_are_403(api: Api) -> None:
    user, card = await make_user_with_card(api, 10_000)
    trip = json_body(await board(api, card["card_id"]), 201)
    await refused_all(
        api,
        403,
        "FORBIDDEN",
        [
            (
                "point boards",
                post(
                    api,
                    "/trips",
                    {"card_id": card["card_id"], "route_id": 1, "boarding_station_id": 1},
                    "recharge_point",
                ),
            ),
            (
                "point ends a trip",
                post(api, f"/trips/{trip['trip_id']}/end", {"disembarking_station_id": 2}, "recharge_point"),
            ),
            ("point registers a user", post(api, "/users", user_fields(), "recharge_point")),
            ("validator registers a user", post(api, "/users", user_fields(), "validator")),
            ("point issues a card", post(api, "/cards", {"user_id": user["user_id"]}, "recharge_point")),
            ("validator recharges", post(api, "/recharges", {"card_id": card["card_id"], "amount": 1000}, "validator")),
            (
                "point names another point",
                post(
                    api,
                    "/recharges",
                    {"card_id": card["card_id"], "amount": 1000, "recharge_point_id": 2},
                    "recharge_point",
                ),
            ),
            (
                "validator blocks a card",
                lambda: api.http.patch(
                    f"/cards/{card['card_id']}", headers=api.auth("validator"), json={"status": "lost"}
                ),
            ),
        ],
    )


# ---------------------------------------------------------------- 404
async def test_unknown_ids_are_404_with_their_code(api: Api) -> None:
    _user, card = await make_user_with_card(api, 10_000)
    trip = json_body(await board(api, card["card_id"]), 201)
    card_id, missing = card["card_id"], 999_999

    async def expect(code: str, requests: Sequence[tuple[str, Callable[..., Awaitable[httpx.Response]]]]) -> None:
        await refused_all(api, 404, code, requests)

    await expect(
        "CARD_NOT_FOUND",
        [
            ("recharge", post(api, "/recharges", {"card_id": missing, "amount": 1000})),
            (
                "keyed recharge",
                post(api, "/recharges", {"card_id": missing, "amount": 1000}, **{"Idempotency-Key": "k1"}),
            ),
            ("board", post(api, "/trips", {"card_id": missing, "route_id": 1, "boarding_station_id": 1}, "validator")),
            ("patch", lambda: api.http.patch(f"/cards/{missing}", headers=api.auth("admin"), json={"status": "lost"})),
            ("balance", lambda: api.http.get(f"/cards/{missing}/balance")),
            ("trips", lambda: api.http.get(f"/trips/card/{missing}")),
        ],
    )
    await expect(
        "TRIP_NOT_FOUND",
        [
            ("get", lambda: api.http.get(f"/trips/{missing}")),
            ("end", post(api, f"/trips/{missing}/end", {"disembarking_station_id": 2}, "validator")),
        ],
    )
    await expect(
        "USER_NOT_FOUND",
        [
            ("card", post(api, "/cards", {"user_id": missing})),
            ("recharges", lambda: api.http.get(f"/users/{missing}/recharges", headers=api.auth("admin"))),
        ],
    )
    await expect(
        "ROUTE_NOT_FOUND",
        [("board", post(api, "/trips", {"card_id": card_id, "route_id": 99, "boarding_station_id": 1}, "validator"))],
    )
    await expect(
        "STATION_NOT_FOUND",
        [
            ("board", post(api, "/trips", {"card_id": card_id, "route_id": 1, "boarding_station_id": 99}, "validator")),
            ("end", post(api, f"/trips/{trip['trip_id']}/end", {"disembarking_station_id": 99}, "validator")),
        ],
    )
    await expect(
        "RECHARGE_POINT_NOT_FOUND",
        [
            ("recharge", post(api, "/recharges", {"card_id": card_id, "amount": 1000, "recharge_point_id": 99})),
            (
                "keyed",
                post(
                    api,
                    "/recharges",
                    {"card_id": card_id, "amount": 1000, "recharge_point_id": 99},
                    **{"Idempotency-Key": "k2"},
                ),
            ),
        ],
    )
    assert await balance_in_db(api, card_id) == 10_000 - SITP_FARE


async def test_a_404_is_not_cached(api: Api) -> None:
    user = await make_user(api)
    sequence = await fetchval(api, "SELECT pg_get_serial_sequence('cards', 'card_id')")
    next_card = await fetchval(
        api, f"SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM {sequence}"
    )
    assert_problem(await api.http.get(f"/cards/{next_card}/balance"), 404, "CARD_NOT_FOUND")
    assert_problem(await api.http.get(f"/trips/card/{next_card}"), 404, "CARD_NOT_FOUND")
    card = await make_card(api, user["user_id"])
    assert card["card_id"] == next_card
    assert json_body(await api.http.get(f"/cards/{next_card}/balance"))["balance"] == 0
    assert json_body(await api.http.get(f"/trips/card/{next_card}")) == []


# ---------------------------------------------------------------- 409, 402, 422 reused key
async def test_recharging_or_boarding_a_card_that_is_not_active_is_409(api: Api) -> None:
    _, card = await make_user_with_card(api, 10_000)
    card_id = card["card_id"]
    for status in ("blocked", "lost", "inactive"):
        await set_status(api, card_id, status)
        before = await snapshot(api)
        for response in (
            await recharge(api, card_id, 1000),
            await recharge(api, card_id, 1000, role="recharge_point"),
            await recharge(api, card_id, 1000, key=f"blocked-{status}"),
            await board(api, card_id),
        ):
            body = assert_problem(response, 409, "CARD_NOT_ACTIVE")
            assert body.get("card_status") == status
        assert await snapshot(api) == before
    await set_status(api, card_id, "active")
    # The key a refused recharge carried was not spent.
    assert json_body(await recharge(api, card_id, 1000, key="blocked-lost"), 201)["balance"] == 11_000


async def test_ending_a_trip_twice_is_409_and_keeps_the_first_end(api: Api) -> None:
    _, card = await make_user_with_card(api, 10_000)
    trip = json_body(await board(api, card["card_id"]), 201)
    ended = json_body(await end_trip(api, trip["trip_id"], 2))
    async with unchanged(api):
        assert_problem(await end_trip(api, trip["trip_id"], 3), 409, "TRIP_ALREADY_ENDED")
    assert json_body(await api.http.get(f"/trips/{trip['trip_id']}")) == ended


async def test_boarding_a_route_out_of_service_is_409(api: Api) -> None:
    _, card = await make_user_with_card(api, 10_000)
    async with unchanged(api):
        assert_problem(await board(api, card["card_id"], 4, 1), 409, "ROUTE_NOT_ACTIVE")


async def test_taken_email_id_number_or_card_number_is_409(api: Api) -> None:
    user = await make_user(api, email="Maria.Lopez@Example.co", id_number="CC-1020304050")
    card = await make_card(api, user["user_id"], "5555000011112222")
    await refused_all(
        api,
        409,
        "ALREADY_EXISTS",
        [
            ("same email", post(api, "/users", user_fields(email="Maria.Lopez@Example.co"))),
            ("email in another case", post(api, "/users", user_fields(email="maria.lopez@example.CO"))),
            ("id_number", post(api, "/users", user_fields(id_number="CC-1020304050"))),
            ("card_number", post(api, "/cards", {"user_id": user["user_id"], "card_number": card["card_number"]})),
        ],
    )


async def test_boarding_with_too_little_balance_is_402_with_balance_and_fare(api: Api) -> None:
    _, card = await make_user_with_card(api, SITP_FARE - 1)
    async with unchanged(api):
        body = assert_problem(await board(api, card["card_id"]), 402, "INSUFFICIENT_BALANCE")
    assert (body["balance"], body["fare"]) == (SITP_FARE - 1, SITP_FARE)

    _, other = await make_user_with_card(api, SITP_FARE + 50)
    json_body(await board(api, other["card_id"], 1, 1), 201)
    async with unchanged(api):
        body = assert_problem(await board(api, other["card_id"], 2, 3), 402, "INSUFFICIENT_BALANCE")
    assert (body["balance"], body["fare"]) == (50, TRANSFER_FARE)
    assert await balance_in_db(api, other["card_id"]) == 50


async def test_an_idempotency_key_reused_with_another_body_is_422(api: Api) -> None:
    _, card = await make_user_with_card(api)
    _, other = await make_user_with_card(api)
    first = json_body(await recharge(api, card["card_id"], 1000, key="receipt-42"), 201)
    await refused_all(
        api,
        422,
        "IDEMPOTENCY_KEY_REUSED",
        [
            (
                "amount",
                post(
                    api, "/recharges", {"card_id": card["card_id"], "amount": 2000}, **{"Idempotency-Key": "receipt-42"}
                ),
            ),
            (
                "card",
                post(
                    api,
                    "/recharges",
                    {"card_id": other["card_id"], "amount": 1000},
                    **{"Idempotency-Key": "receipt-42"},
                ),
            ),
            (
                "point",
                post(
                    api,
                    "/recharges",
                    {"card_id": card["card_id"], "amount": 1000, "recharge_point_id": 1},
                    **{"Idempotency-Key": "receipt-42"},
                ),
            ),
        ],
    )
    replay = json_body(await recharge(api, card["card_id"], 1000, key="receipt-42"), 201)
    assert replay == first
    assert (await balance_in_db(api, card["card_id"]), await balance_in_db(api, other["card_id"])) == (1000, 0)


# ---------------------------------------------------------------- 404, 405, 413, 415 from HTTP itself
async def test_wrong_method_is_405_problem(api: Api) -> None:
    for method, path in (
        ("DELETE", "/trips/1"),
        ("PUT", "/recharges"),
        ("GET", "/recharges"),
        ("POST", "/trips/total"),
        ("DELETE", "/cards/1"),
        ("POST", "/health"),
    ):
        response = await api.http.request(method, path, headers=api.auth("admin"))
        assert_problem(response, 405)
        assert response.headers.get("allow"), (method, path)
        assert method not in response.headers["allow"]
    # The same answer every time: the methods in order, not as a set happens to iterate.
    assert (await api.http.post("/trips/total")).headers["allow"] == "GET, HEAD"


async def test_unknown_path_is_404_problem(api: Api) -> None:
    for url in (
        api.url + "/api/v1/nothing-here",
        api.url + "/api/v2/health",
        api.url + "/nothing",
        api.url + "/api/v1/cards/1/balance/extra",
    ):
        assert_problem(await api.http.get(url), 404)


async def test_a_body_over_64_kib_is_413_with_or_without_content_length(api: Api) -> None:
    _, card = await make_user_with_card(api, 1000)
    # Valid JSON once decoded: refusing it is the size limit's doing, not the parser's.
    valid = raw_json({"card_id": card["card_id"], "amount": 500})
    oversized = valid + b" " * (64 * 1024 + 1 - len(valid))
    exact = valid + b" " * (64 * 1024 - len(valid))
    headers = {**api.auth("admin"), "content-type": "application/json"}

    async def chunked(body: bytes):
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    async with unchanged(api):
        assert_problem(await api.http.post("/recharges", headers=headers, content=oversized), 413)
        response = await api.http.post("/recharges", headers=headers, content=chunked(oversized))
        assert_problem(response, 413)
    assert json_body(await api.http.post("/recharges", headers=headers, content=exact), 201)["balance"] == 1500
    assert json_body(await api.http.post("/recharges", headers=headers, content=chunked(exact)), 201)["balance"] == 2000


async def test_a_body_that_is_not_application_json_is_415(api: Api) -> None:
    _, card = await make_user_with_card(api, 1000)
    valid = raw_json({"card_id": card["card_id"], "amount": 500})
    async with unchanged(api):
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx", None):
            headers = api.auth("admin") | ({"content-type": content_type} if content_type else {})
            assert_problem(await api.http.post("/recharges", headers=headers, content=valid), 415)
    charset = await api.http.post(
        "/recharges", content=valid, headers={**api.auth("admin"), "content-type": "application/json; charset=utf-8"}
    )
    assert json_body(charset, 201)["balance"] == 1500
