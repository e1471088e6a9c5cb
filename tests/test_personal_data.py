"""Personal data (docs/design.md: who may read what, issue 11): what names or profiles a person needs an admin token, and
no public answer carries a name, email, phone, id_number, address, birth date or card number.
(test_tokens.py runs the full role matrix of every guarded operation.)"""

from __future__ import annotations

import typing
from typing import Any

import pytest

import server
from tests.support.api import assert_problem, board, json_body, make_card, recharge, user_fields
from tests.support.hostile import fill_path, op_label
from tests.support.stack import Api
from travel.endpoints.declaration import Endpoint

PUBLIC_READS = [op for op in server.ENDPOINTS if not op.guarded]
USER_READS = [
    op
    for op in server.ENDPOINTS
    if op.method == "GET" and op.path.startswith(f"{server.API}/users/") and op.path.split("/")[-1] != "count"
]
PERSONAL_FIELDS = {
    "first_name",
    "last_name",
    "email",
    "contact_number",
    "id_number",
    "residential_address",
    "date_of_birth",
    "city_of_birth",
    "card_number",
    "user_id",
}


def answer_fields(answer: Any) -> set[str]:
    """The member names of an answer type (a Struct or a list of them)."""
    item = typing.get_args(answer)[0] if typing.get_origin(answer) is list else answer
    return set(getattr(item, "__struct_fields__", ()))


def test_no_public_answer_type_has_a_personal_field() -> None:
    exposed = {op_label(op): answer_fields(op.answer) & PERSONAL_FIELDS for op in PUBLIC_READS}
    assert all(not fields for fields in exposed.values()), exposed
    # ...and the reads that have one are exactly the admin-only ones.
    personal = {
        op_label(op)
        for op in server.ENDPOINTS
        if op.method == "GET" and answer_fields(op.answer) & (PERSONAL_FIELDS - {"user_id"})
    }
    assert personal == {op_label(op) for op in USER_READS} and personal, personal


@pytest.mark.parametrize("op", USER_READS, ids=op_label)
async def test_user_reads_need_an_admin_token(api: Api, op: Endpoint) -> None:
    user = json_body(await api.http.post("/users", headers=api.auth("admin"), json=user_fields()), 201)
    path = fill_path(op, {"user_id": user["user_id"]})
    for headers, status, code in (
        ({}, 401, "UNAUTHORIZED"),
        ({"Authorization": "Bearer not-a-token"}, 401, "UNAUTHORIZED"),
        (api.auth("recharge_point"), 403, "FORBIDDEN"),
        (api.auth("validator"), 403, "FORBIDDEN"),
    ):
        response = await api.http.get(path, headers=headers)
        assert_problem(response, status, code)
        assert user["email"] not in response.text
        if status == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
    answer = json_body(await api.http.get(path, headers=api.auth("admin")))
    assert isinstance(answer, list)


async def test_no_public_read_carries_personal_data(api: Api) -> None:
    """Every public read, on the ids of a user with distinctive personal data."""
    fields = user_fields(
        first_name="Zenaida",
        last_name="Quintanilla",
        contact_number="+57 310 555 0199",
        residential_address="Carrera 7 # 71-21",
        date_of_birth="1987-06-05",
        city_of_birth="Tunja",
        gender="F",
    )
    user = json_body(await api.http.post("/users", headers=api.auth("admin"), json=fields), 201)
    card = await make_card(api, user["user_id"], "7700123456789")
    json_body(await recharge(api, card["card_id"], 20_000, role="recharge_point"), 201)
    trip = json_body(await board(api, card["card_id"]), 201)
    ids = {"card_id": card["card_id"], "trip_id": trip["trip_id"], "user_id": user["user_id"]}
    secrets = [
        fields[name]
        for name in (
            "first_name",
            "last_name",
            "contact_number",
            "residential_address",
            "date_of_birth",
            "city_of_birth",
            "email",
            "id_number",
        )
    ]
    secrets.append(card["card_number"])
    for op in PUBLIC_READS:
        response = await api.http.get(fill_path(op, ids))
        assert response.status_code == 200, (op_label(op), response.text)
        assert [secret for secret in secrets if secret in response.text] == [], op_label(op)
