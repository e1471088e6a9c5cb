"""The token API (admin): make a write token, list the live ones, revoke one."""

from __future__ import annotations

from starlette.responses import Response

from travel import models
from travel.auth import new_token
from travel.database import QUERIES, rows_as
from travel.endpoints.declaration import Call
from travel.endpoints.responses import JSONBytes, encode

CREATE_TOKEN = QUERIES["create-token"]
TOKENS_LIVE = rows_as("tokens-live", models.TokenInfo)
REVOKE_TOKEN = QUERIES["revoke-token"]


async def create_token(call: Call[models.TokenRequest]) -> Response:
    body = call.body
    token, token_digest = new_token()
    row = await call.state.db.run(CREATE_TOKEN, token_digest, body.role, body.label, body.recharge_point_id)
    response = JSONBytes(encode(models.NewToken(**row, token=token)), 201)
    response.raw_headers.append((b"cache-control", b"no-store"))  # the secret, shown this once
    return response


async def list_tokens(call: Call[None]) -> list[models.TokenInfo]:
    return [models.TokenInfo(*row) for row in await call.state.db.run(TOKENS_LIVE)]


async def revoke_token(call: Call[None]) -> None:
    await call.state.db.run(REVOKE_TOKEN, call.path_id)
    call.state.tokens.forget(call.path_id)  # here before answering; other instances on its NOTIFY
