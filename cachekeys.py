"""Every Redis key the service uses, and its TTL. Nothing else spells a key.

Keys are bytes (what the Redis client sends). Each cached read has a key and a TTL in
seconds; a write's invalidation lists the keys it made stale. `generation(key)` is the
guard of the cache-aside protocol (see cache.py): a write bumps it, a fill checks it.
"""

from __future__ import annotations

TRIP_TTL = 300
TRIPS_TOTAL_TTL = 300
CARD_TRIPS_TTL = 300
REVENUE_TTL = 60
CARD_BALANCE_TTL = 300
USER_RECHARGES_TTL = 300
REFERENCE_TTL = 300
# How long a generation is kept; fills older than MAX_FILL_AGE are dropped anyway.
GENERATION_TTL = 600
MAX_FILL_AGE = 30.0

TRIPS_TOTAL = b"trips:total"
TRIPS_TOTAL_BY_LOCALITY = b"trips:total:localities"
REVENUE_TOTAL = b"finance:total_revenue"
REVENUE_BY_LOCALITY = b"finance:revenue:by_localities"
ROUTES_ALL = b"routes:all"
STATIONS_ALL = b"stations:all"
# Every aggregate a trip changes.
TRIP_AGGREGATES = (TRIPS_TOTAL, TRIPS_TOTAL_BY_LOCALITY, REVENUE_TOTAL, REVENUE_BY_LOCALITY)


def trip(trip_id: int) -> bytes:
    return b"trip:%d" % trip_id


def card_trips(card_id: int) -> bytes:
    return b"trips:card:%d" % card_id


def card_balance(card_id: int) -> bytes:
    return b"card:%d:balance" % card_id


def user_recharges(user_id: int) -> bytes:
    return b"user:%d:recharges" % user_id


# Where every write's generation comes from (cache.py's invalidation script).
GENERATION_SEQUENCE = b"gen:sequence"


def generation(key: bytes) -> bytes:
    return b"gen:" + key


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
