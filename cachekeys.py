"""Every Redis key the service uses, and its TTL. Nothing else spells a key.

A cached read's key is a `CachedKey`: its name (a fixed one, or a pattern with `{id}`) and
its TTL in seconds, declared once; calling it gives the bytes Redis is sent. The route table
and the OpenAPI document read both from here. A write's invalidation lists the keys it made
stale. `generation(key)` is the guard of the cache-aside protocol (see cache.py): a write
bumps it, a fill checks it.
"""

from __future__ import annotations


class CachedKey:
    """A cached read's key: `pattern` ("card:{id}:balance", or a fixed name) and its TTL."""

    __slots__ = ("pattern", "ttl", "_template")

    def __init__(self, pattern: str, ttl: int) -> None:
        self.pattern = pattern
        self.ttl = ttl
        self._template = pattern.replace("{id}", "%d").encode()

    def __call__(self, *ids: int) -> bytes:
        """The key's bytes for `ids` (none for a fixed name)."""
        return self._template % ids if ids else self._template

    @property
    def family(self) -> str:
        """The name without its id: what a key count groups by."""
        return self.pattern.split(":{", 1)[0]

    def __str__(self) -> str:
        return f"{self.pattern} · {self.ttl} s"


trip = CachedKey("trip:{id}", 300)
trips_total = CachedKey("trips:total", 300)
trips_by_locality = CachedKey("trips:total:localities", 300)
card_trips = CachedKey("trips:card:{id}", 300)
revenue_total = CachedKey("finance:total_revenue", 60)
revenue_by_locality = CachedKey("finance:revenue:by_localities", 60)
card_balance = CachedKey("card:{id}:balance", 300)
user_recharges = CachedKey("user:{id}:recharges", 300)
routes_all = CachedKey("routes:all", 300)
stations_all = CachedKey("stations:all", 300)
CACHED_KEYS = (trip, trips_total, trips_by_locality, card_trips, revenue_total, revenue_by_locality,
               card_balance, user_recharges, routes_all, stations_all)

# Every aggregate a trip changes.
TRIP_AGGREGATES = (trips_total(), trips_by_locality(), revenue_total(), revenue_by_locality())

# How long a generation is kept; fills older than MAX_FILL_AGE are dropped anyway.
GENERATION_TTL = 600
MAX_FILL_AGE = 30.0
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
