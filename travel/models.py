"""Request and response bodies as msgspec Structs: decoding is validation, encoding is fast.

Response Structs list their fields in the order of the columns their query selects, so a
row becomes a Struct positionally (`Card(*row)`), with no dict in between; every such query
is bound with `database.rows_as`, and start-up checks its columns against its Struct.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta

BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1

BigId = Annotated[int, Meta(ge=1, le=BIGINT_MAX, description="a positive bigint id")]
IntId = Annotated[int, Meta(ge=1, le=INT_MAX, description="a positive integer id")]
Pesos = Annotated[int, Meta(description="Colombian pesos, an exact integer")]
RechargeAmount = Annotated[int, Meta(ge=1, le=1_000_000, description="pesos, 1..1,000,000")]
# The most a card may hold (schema.sql cards_balance_max, functions.sql card_balance_max()):
# a recharge past it is 409 BALANCE_LIMIT.
BALANCE_MAX = 5_000_000


def text(max_length: int, *, min_length: int = 1, pattern: str = r"[^\x00-\x1f\x7f-\x9f]*") -> Meta:
    """A string of bounded length matching `pattern` whole; by default, without C0 or C1
    control characters (PostgreSQL cannot store NUL; the others are never a name)."""
    # `$(?!\n)`: a bare `$` also matches before a final newline, in Python as in ECMA regexes.
    whole = f"^(?:{pattern})$(?!\n)"
    return Meta(min_length=min_length, max_length=max_length, pattern=whole)


Name = Annotated[str, text(100)]
Email = Annotated[
    str, text(254, pattern=r"[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s\x00-\x1f\x7f-\x9f]+\.[^@\s\x00-\x1f\x7f-\x9f]+")
]
IdNumber = Annotated[str, text(20, min_length=4, pattern=r"[0-9A-Za-z-]+")]
Phone = Annotated[str, text(20, pattern=r"\+?[0-9 ()-]+")]
CardNumber = Annotated[str, text(20, min_length=8, pattern=r"[0-9]+")]
Address = Annotated[str, text(255)]
EARLIEST_BIRTH = dt.date(1900, 1, 2)  # schema.sql: CHECK (date_of_birth > '1900-01-01')
BirthDate = Annotated[
    dt.date,
    Meta(
        description=f"from {EARLIEST_BIRTH} to today", extra_json_schema={"formatMinimum": EARLIEST_BIRTH.isoformat()}
    ),
]
CardStatus = Literal["active", "blocked", "lost", "inactive"]


class Body(msgspec.Struct, forbid_unknown_fields=True):
    """Base of request bodies: unknown members are refused rather than silently dropped."""


# ---------------------------------------------------------------- requests
class RechargeRequest(Body):
    card_id: BigId
    amount: RechargeAmount
    recharge_point_id: IntId | None = None


class BoardRequest(Body):
    card_id: BigId
    route_id: IntId
    boarding_station_id: IntId


class EndTripRequest(Body):
    disembarking_station_id: IntId


class UserRequest(Body):
    first_name: Name
    last_name: Name
    email: Email
    id_number: IdNumber
    contact_number: Phone | None = None
    gender: Literal["M", "F", "O"] | None = None
    date_of_birth: BirthDate | None = None
    residential_address: Address | None = None
    city_of_birth: Name | None = None

    def __post_init__(self) -> None:
        # msgspec reports a ValueError raised here as a ValidationError (422).
        if self.date_of_birth is not None and not EARLIEST_BIRTH <= self.date_of_birth <= dt.date.today():
            raise ValueError(f"date_of_birth must be between {EARLIEST_BIRTH} and today")


class CardRequest(Body):
    user_id: BigId
    card_number: CardNumber | None = None


class CardStatusRequest(Body):
    status: CardStatus


TokenRole = Literal["admin", "recharge_point", "validator"]


class TokenRequest(Body):
    role: TokenRole
    label: Name
    recharge_point_id: Annotated[
        IntId | None,
        Meta(description="the point a recharge_point token recharges at; required for that role, refused for others"),
    ] = None

    def __post_init__(self) -> None:
        if (self.role == "recharge_point") != (self.recharge_point_id is not None):
            raise ValueError("recharge_point_id is required for a recharge_point token and refused for any other")


# ---------------------------------------------------------------- responses
class Health(msgspec.Struct):
    status: Literal["ok", "degraded"]
    database: Literal["ok", "down"]
    cache: Literal["ok", "down"]
    # The documentation's samples by status (a generated one takes each enum's first value).
    EXAMPLES: ClassVar[dict[int, dict[str, str]]] = {
        200: {"status": "ok", "database": "ok", "cache": "ok"},
        503: {"status": "degraded", "database": "down", "cache": "ok"},
    }


class Trip(msgspec.Struct):
    trip_id: int
    card_id: int
    vehicle_id: int | None
    route_id: int
    boarding_station_id: int
    disembarking_station_id: int | None
    boarding_time: dt.datetime
    disembarking_time: dt.datetime | None
    fare_id: int
    fare_charged: Pesos
    is_transfer: bool
    transfer_group_id: int | None
    driver_id: int | None


class Boarding(msgspec.Struct):
    trip_id: int
    card_id: int
    route_id: int
    boarding_station_id: int
    boarding_time: dt.datetime
    fare_id: int
    fare_charged: Pesos
    is_transfer: bool
    transfer_group_id: int | None
    balance: Pesos


class TripsTotal(msgspec.Struct):
    total_trips: int
    completed_trips: int
    active_trips: int
    total_revenue: Pesos


class LocalityTrips(msgspec.Struct):
    location_id: int
    locality: str
    total_trips: int
    completed_trips: int
    active_trips: int


class Revenue(msgspec.Struct):
    total_revenue: Pesos
    currency: Literal["COP"] = "COP"


class LocalityRevenue(msgspec.Struct):
    location_id: int
    locality: str
    total_revenue: Pesos
    currency: Literal["COP"] = "COP"


class CardBalance(msgspec.Struct):
    card_id: int
    balance: Pesos
    status: CardStatus
    last_used_date: dt.datetime | None


class Recharge(msgspec.Struct):
    recharge_id: int
    card_id: int
    amount: Pesos
    balance: Pesos
    recharge_timestamp: dt.datetime
    recharge_point_id: int | None


class UserRecharge(msgspec.Struct):
    recharge_id: int
    card_id: int
    card_number: str
    amount: Pesos
    recharge_timestamp: dt.datetime
    recharge_point_id: int | None
    transaction_id: str


class Count(msgspec.Struct):
    count: int


class User(msgspec.Struct):
    user_id: int
    first_name: str
    last_name: str
    contact_number: str | None
    email: str
    gender: str | None
    date_of_birth: dt.date | None
    residential_address: str | None
    id_number: str
    city_of_birth: str | None
    registration_date: dt.datetime


class Card(msgspec.Struct):
    card_id: int
    card_number: str
    user_id: int
    acquisition_date: dt.datetime
    status: CardStatus
    balance: Pesos
    last_used_date: dt.datetime | None
    update_date: dt.datetime


class Route(msgspec.Struct):
    route_id: int
    route_code: str
    route_name: str
    route_type: str
    origin_station_id: int | None
    destination_station_id: int | None
    is_active: bool


class Station(msgspec.Struct):
    station_id: int
    name: str
    station_code: str
    station_type: str
    location_id: int | None
    locality: str | None
    latitude: float | None
    longitude: float | None
    is_active: bool


class HourTrips(msgspec.Struct):
    hour: dt.datetime  # the hour's start, in Bogotá's time (-05:00)
    trips: int
    completed_trips: int
    revenue: Pesos


# ---------------------------------------------------------------- /stats (no personal data)
class RouteStats(msgspec.Struct):
    route: str  # the route template, never a raw path
    requests: int  # answered in the window
    requests_per_second: float
    p50_ms: float
    p99_ms: float


class CacheStats(msgspec.Struct):
    status: Literal["ok", "down"]
    hits: int  # cached reads answered from Redis since start
    misses: int
    hit_ratio: float | None  # None before the first cached read
    window_hits: int  # the same over the window
    window_misses: int
    window_hit_ratio: float | None


class RedisStats(msgspec.Struct):
    used_memory: int  # bytes
    keyspace_hits: int
    keyspace_misses: int
    evicted_keys: int
    connected_clients: int
    keys: int  # DBSIZE
    keys_by_family: dict[str, int]  # by SCAN; scaled up from a sample when `keys_counted` < `keys`
    keys_counted: int


class PoolStats(msgspec.Struct):
    size: int
    idle: int
    max_size: int
    waiting: int  # requests waiting for a connection


class Stats(msgspec.Struct):
    uptime_seconds: float
    window_seconds: int
    routes: list[RouteStats]
    cache: CacheStats
    redis: RedisStats | None  # None while Redis does not answer
    pool: PoolStats


class TokenInfo(msgspec.Struct):
    """A write token as listed: never its secret nor its hash. last_used_at is when an API
    instance last looked it up (on a token-cache miss, noted at most once a minute): it lags
    the true last use by up to about 90 seconds."""

    token_id: int
    role: TokenRole
    recharge_point_id: int | None
    label: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None


class NewToken(TokenInfo):
    """A token just made: `token` is shown this once (only its sha256 is stored)."""

    token: str
