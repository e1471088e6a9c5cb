"""The write handlers. Recharges, boardings and trip ends go through group commit
(groupcommit.py); registrations, cards and card status are one function call each. Every write
invalidates what it made stale before its answer goes out (docs/design.md: cache protocol)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from starlette.responses import Response

import cachekeys
from travel import models
from travel.cache import Cache
from travel.database import QUERIES, Database, rows_as
from travel.endpoints.declaration import Call
from travel.endpoints.parsing import idempotency_key
from travel.endpoints.responses import JSONBytes, encode
from travel.errors import STATEMENT_ERRORS, Problem
from travel.observability import metrics

log = logging.getLogger("travel.api")

BUMP_CACHE_EPOCH = QUERIES["bump-cache-epoch"]
CREATE_USER = rows_as("create-user", models.User)
ISSUE_CARD = rows_as("issue-card", models.Card)
SET_CARD_STATUS = rows_as("set-card-status", models.Card)


async def invalidated(cache: Cache, database: Database, keys: Sequence[bytes]) -> None:
    """DEL what committed writes made stale, before their answers go out. If Redis did not
    take it, move every instance's cache to a new epoch, so that what Redis still holds is
    never read again. The writes have committed: their answers go out whatever happens here."""
    if await cache.invalidate(keys):
        return
    metrics.CACHE_ERRORS.inc()
    try:
        cache.epoch = max(cache.epoch, await database.run(BUMP_CACHE_EPOCH))
    except STATEMENT_ERRORS as error:
        log.error("cache epoch not bumped after a failed invalidation: %s", error.__class__.__name__)


async def create_recharge(call: Call[models.RechargeRequest]) -> Response:
    caller, body = call.caller, call.body
    assert caller is not None, "a guarded endpoint"
    key = idempotency_key(call.request)
    point = body.recharge_point_id
    if caller.role == "recharge_point":
        if point is not None and point != caller.recharge_point_id:
            raise Problem(403, "FORBIDDEN", "a recharge point token recharges at its own point only")
        point = caller.recharge_point_id
    # A replay invalidates too: it may answer before the first request's DEL has gone out.
    recharge, row = await call.state.recharges.submit(body.card_id, body.amount, point, caller.token_id, key)
    response = JSONBytes(encode(recharge), 201)
    if row["replayed"]:
        response.raw_headers.append((b"idempotent-replayed", b"true"))
    return response


async def board(call: Call[models.BoardRequest]) -> models.Boarding:
    body = call.body
    boarding, _ = await call.state.boardings.submit(body.card_id, body.route_id, body.boarding_station_id)
    assert isinstance(boarding, models.Boarding)
    return boarding


async def end_trip(call: Call[models.EndTripRequest]) -> models.Trip:
    trip, _ = await call.state.trip_ends.submit(call.path_id, call.body.disembarking_station_id)
    assert isinstance(trip, models.Trip)
    return trip


async def create_user(call: Call[models.UserRequest]) -> models.User:
    body = call.body
    row = await call.state.db.run(
        CREATE_USER,
        body.first_name,
        body.last_name,
        body.email,
        body.id_number,
        body.contact_number,
        body.gender,
        body.date_of_birth,
        body.residential_address,
        body.city_of_birth,
    )
    return models.User(*row)


async def issue_card(call: Call[models.CardRequest]) -> models.Card:
    row = await call.state.db.run(ISSUE_CARD, call.body.user_id, call.body.card_number)
    return models.Card(*row)


async def set_card_status(call: Call[models.CardStatusRequest]) -> models.Card:
    card_id = call.path_id
    row = await call.state.db.run(SET_CARD_STATUS, card_id, call.body.status)
    await invalidated(call.state.cache, call.state.db, cachekeys.after_card_change(card_id))
    return models.Card(*row)
