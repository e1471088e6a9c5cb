"""GET /trips/hourly?hours=N: trips and revenue per hour in Bogotá's time, the last N hours.

Cached as trips:hourly:{N}; the 168 possible keys share one generation (cachekeys.py), so a
boarding or a trip's end makes every N stale at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request

from travel import models
from travel.errors import Problem

BOGOTA = ZoneInfo("America/Bogota")
DEFAULT_HOURS = 24
MAX_HOURS = 168  # a week


def hours_asked(request: Request) -> int:
    """The `hours` query parameter: an integer in 1..MAX_HOURS (default DEFAULT_HOURS), else 422."""
    given = request.query_params.getlist("hours")
    if not given:
        return DEFAULT_HOURS
    raw = given[-1]
    if len(given) == 1 and raw.isascii() and raw.isdigit() and len(raw) <= 3 and 1 <= int(raw) <= MAX_HOURS:
        return int(raw)
    raise Problem(422, "VALIDATION_ERROR", f"hours must be one integer from 1 to {MAX_HOURS}", field="hours")


def hours_of(rows: Sequence[Any]) -> list[models.HourTrips]:
    """The query's rows, each hour stamped in Bogotá's time."""
    return [
        models.HourTrips(hour.astimezone(BOGOTA), trips, completed, revenue) for hour, trips, completed, revenue in rows
    ]
