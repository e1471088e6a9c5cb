"""GET /trips/hourly?hours=N: trips and revenue per hour in Bogotá's time, the last N hours.

Cached as trips:hourly:{N}. The 168 possible keys share one generation (cachekeys.generation),
so a boarding or a trip's end makes every N stale by bumping it once. A value is stored as
"<generation it was filled under>|<JSON>": a read serves it only while that is still the
family's generation, and a fill is dropped if a write bumped it meanwhile (cache.py's guard).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from starlette.requests import Request

import cachekeys
import metrics
import models
from cache import Cache
from errors import Problem

BOGOTA = ZoneInfo("America/Bogota")
DEFAULT_HOURS = 24
MAX_HOURS = 168  # a week
_TAG_END = b"|"


def hours_asked(request: Request) -> int:
    """The `hours` query parameter: an integer in 1..MAX_HOURS (default DEFAULT_HOURS), else 422."""
    given = request.query_params.getlist("hours")
    if not given:
        return DEFAULT_HOURS
    raw = given[-1]
    if len(given) == 1 and raw.isascii() and raw.isdigit() and len(raw) <= 3 and 1 <= int(raw) <= MAX_HOURS:
        return int(raw)
    raise Problem(422, "VALIDATION_ERROR", f"hours must be one integer from 1 to {MAX_HOURS}", field="hours")


def encode_hours(rows: Sequence[Any]) -> bytes:
    """The query's rows as JSON, each hour stamped in Bogotá's time."""
    return msgspec.json.encode([models.HourTrips(hour.astimezone(BOGOTA), trips, completed, revenue)
                                for hour, trips, completed, revenue in rows])


async def read(cache: Cache, hours: int, load: Callable[[], Awaitable[bytes]]) -> tuple[bytes, bool]:
    """The JSON for `hours` and whether Redis had it: the stored value if it was filled under
    the family's current generation, else `load()`, stored tagged with the generation seen."""
    # Shielded: one lookup serves every request for this key in this tick.
    lookup = await asyncio.shield(cache.lookup(cachekeys.trips_hourly(hours)))
    if lookup.value is not None:
        filled_under, _, body = lookup.value.partition(_TAG_END)
        if filled_under == lookup.generation:
            metrics.CACHE_HITS.inc()
            return body, True
    metrics.CACHE_MISSES.inc()
    body = await load()
    await cache.fill(lookup, cachekeys.TRIPS_HOURLY_TTL, lookup.generation + _TAG_END + body)
    return body, False
