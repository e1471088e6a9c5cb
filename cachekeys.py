"""Every Redis key the service uses, and its TTL. Nothing else spells a key.

Keys are bytes (what the Redis client sends). Each cached read has a key and a TTL in
seconds; a write's invalidation lists the keys it made stale. `generation(key)` is the
guard of the cache-aside protocol (see cache.py): a write bumps it, a fill checks it.
"""

from __future__ import annotations

import re

TRIP_TTL = 300
TRIPS_TOTAL_TTL = 300
CARD_TRIPS_TTL = 300
REVENUE_TTL = 60
CARD_BALANCE_TTL = 300
USER_RECHARGES_TTL = 300
REFERENCE_TTL = 300
TRIPS_HOURLY_TTL = 60
# How long a generation is kept; fills older than MAX_FILL_AGE are dropped anyway.
GENERATION_TTL = 600
MAX_FILL_AGE = 30.0

TRIPS_TOTAL = b"trips:total"
TRIPS_TOTAL_BY_LOCALITY = b"trips:total:localities"
REVENUE_TOTAL = b"finance:total_revenue"
REVENUE_BY_LOCALITY = b"finance:revenue:by_localities"
ROUTES_ALL = b"routes:all"
STATIONS_ALL = b"stations:all"
# trips:hourly:{N}, N = 1..168, is a family with one generation for every N (`generation`):
# a trip makes them all stale with one SET, not 168 DELs. A value is stored with the
# generation it was filled under (hourly.py), so one filled before a write is never served.
TRIPS_HOURLY = b"trips:hourly"
# Every aggregate a trip changes.
TRIP_AGGREGATES = (TRIPS_TOTAL, TRIPS_TOTAL_BY_LOCALITY, REVENUE_TOTAL, REVENUE_BY_LOCALITY, TRIPS_HOURLY)

TRIP = b"trip:%d"
CARD_TRIPS = b"trips:card:%d"
CARD_BALANCE = b"card:%d:balance"
USER_RECHARGES = b"user:%d:recharges"
TRIPS_HOURLY_N = TRIPS_HOURLY + b":%d"


def trip(trip_id: int) -> bytes:
    return TRIP % trip_id


def card_trips(card_id: int) -> bytes:
    return CARD_TRIPS % card_id


def card_balance(card_id: int) -> bytes:
    return CARD_BALANCE % card_id


def user_recharges(user_id: int) -> bytes:
    return USER_RECHARGES % user_id


def trips_hourly(hours: int) -> bytes:
    return TRIPS_HOURLY_N % hours


# Where every write's generation comes from (cache.py's invalidation script).
GENERATION_SEQUENCE = b"gen:sequence"
GENERATION_PREFIX = b"gen:"


def generation(key: bytes) -> bytes:
    """The name of `key`'s generation; every trips:hourly:{N} shares its family's."""
    epoch, hourly, _ = key.partition(TRIPS_HOURLY + b":")
    return GENERATION_PREFIX + (epoch + TRIPS_HOURLY if hourly else key)


# Key families, as /stats counts what Redis holds: a label and the names it covers.
FAMILIES = (TRIP, CARD_TRIPS, CARD_BALANCE, USER_RECHARGES, TRIPS_HOURLY_N, TRIPS_TOTAL,
            TRIPS_TOTAL_BY_LOCALITY, REVENUE_TOTAL, REVENUE_BY_LOCALITY, ROUTES_ALL, STATIONS_ALL,
            GENERATION_SEQUENCE)
_FAMILY_PATTERNS = [(name.replace(b"%d", b"*").decode(), re.compile(re.escape(name).replace(b"%d", rb"\d+")))
                    for name in FAMILIES]
_EPOCH_PREFIX = re.compile(rb"e\d+:")
GENERATIONS_FAMILY = "gen:*"
OTHER_FAMILY = "other"


def family(name: bytes) -> str:
    """The family label of a Redis name ("card:*:balance"), whatever its cache epoch."""
    if name != GENERATION_SEQUENCE and name.startswith(GENERATION_PREFIX):
        return GENERATIONS_FAMILY
    if epoch := _EPOCH_PREFIX.match(name):
        name = name[epoch.end():]
    return next((label for label, pattern in _FAMILY_PATTERNS if pattern.fullmatch(name)), OTHER_FAMILY)


def in_epoch(epoch: int, key: bytes) -> bytes:
    """`key` in the cache epoch `epoch` (see cache.py); epoch 0 keeps the plain names."""
    return key if epoch == 0 else b"e%d:%s" % (epoch, key)


def after_recharge(card_id: int, user_id: int) -> tuple[bytes, ...]:
    """Keys a recharge makes stale."""
    return card_balance(card_id), user_recharges(user_id)


def after_card_change(card_id: int) -> tuple[bytes, ...]:
    """Keys a change of a card's status makes stale: everything that shows the card."""
    return card_balance(card_id), card_trips(card_id)


def after_boarding(card_id: int) -> tuple[bytes, ...]:
    """Keys a boarding makes stale: the card's balance and trips, and every trip aggregate."""
    return (card_balance(card_id), card_trips(card_id), *TRIP_AGGREGATES)


def after_trip_end(trip_id: int, card_id: int) -> tuple[bytes, ...]:
    """Keys ending a trip makes stale."""
    return (trip(trip_id), card_trips(card_id), *TRIP_AGGREGATES)
