"""Shared by the hostile-input, token, fuzz and personal-data tests: valid bodies of every
operation built from its Struct, paths with their ids filled in, and a cheap snapshot of what
a refused request must leave."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import msgspec

import server
from tests.support.api import PROBLEM_JSON, SNAPSHOT_SQL, user_fields
from travel.endpoints.declaration import Endpoint

GUARDED = [op for op in server.ENDPOINTS if op.guarded]  # writes, and reads that name a person
ROLES = ("admin", "recharge_point", "validator")


class Snapshots:
    """tests.support.api.snapshot on one kept connection: hundreds of cases stay fast."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def take(self) -> dict[str, Any]:
        return dict(await self.conn.fetchrow(SNAPSHOT_SQL))

    @contextlib.asynccontextmanager
    async def unchanged(self) -> AsyncIterator[None]:
        before = await self.take()
        yield
        assert await self.take() == before


def op_label(op: Endpoint) -> str:
    return f"{op.method} {op.path.removeprefix(server.API)}"


def is_problem(response: httpx.Response) -> dict[str, Any]:
    """A 4xx/5xx answer is problem+json with a string `code` and `status` equal to the HTTP status."""
    assert response.headers.get("content-type", "").split(";")[0] == PROBLEM_JSON, (
        response.status_code,
        response.headers.get("content-type"),
        response.content[:300],
    )
    body = msgspec.json.decode(response.content)
    assert isinstance(body, dict), body
    assert isinstance(body.get("code"), str) and body["code"], body
    assert body.get("status") == response.status_code, body
    return body


def valid_body(op: Endpoint, ids: dict[str, int]) -> dict[str, Any]:
    """A body of `op` that succeeds given the existing `ids` (card_id, user_id ...), built from
    the names of its Struct's fields: a new operation fails here until it is taught its fields."""
    assert op.body is not None
    known: dict[str, Any] = {
        "amount": 700,
        "route_id": 1,
        "boarding_station_id": 1,
        "disembarking_station_id": 2,
        "status": "blocked",
        "role": "validator",
        "label": "a validator's token",
        **user_fields(),
        **ids,
    }
    body = {}
    for field in msgspec.structs.fields(op.body):
        if field.required:
            assert field.name in known, f"teach valid_body the field {op.body.__name__}.{field.name}"
            body[field.name] = known[field.name]
    return body


def fill_path(op: Endpoint, ids: dict[str, Any]) -> str:
    """`op`'s path below /api/v1 with its {names} replaced by `ids` (already URL-safe)."""
    path = op.path.removeprefix(server.API)
    for name in op.path_ids():
        path = path.replace("{" + name + "}", str(ids[name]))
    return path
