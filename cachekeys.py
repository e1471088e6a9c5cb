"""Every Redis key the service uses, and its TTL. Nothing else spells a key.

A cached read's key is a `CachedKey`: its name (a fixed one, or a pattern with `{id}`) and
its TTL in seconds, declared once; calling it gives the bytes Redis is sent. The route table,
the OpenAPI document and /stats's key families read all three from here. A write's
invalidation lists the keys it made stale. `generation(name)` is the guard of the cache-aside
protocol (see travel/cache.py): a write bumps it, a fill checks it.
"""

from __future__ import annotations

import re

_PLACEHOLDER = re.compile(r"\{\w+\}")


class CachedKey:
    """A cached read's key: `pattern` ("card:{id}:balance", or a fixed name) and its TTL.

    With `shared_generation`, every id of the pattern shares one generation (named after the
    pattern's head, `family_name`): a write makes them all stale by bumping it once, instead
    of deleting each (trips:hourly:{N} has 168 of them). travel/cache.py then stores each value with
    the generation it was filled under, and serves it only while that is still current.
    """

    __slots__ = ("_template", "family", "family_name", "pattern", "shared_generation", "ttl")

    def __init__(self, pattern: str, ttl: int, *, shared_generation: bool = False) -> None:
        self.pattern = pattern
        self.ttl = ttl
        self.shared_generation = shared_generation
        self.family = _PLACEHOLDER.sub("*", pattern)  # how /stats labels its keys
        self.family_name = pattern.split(":{", 1)[0].encode()
        self._template = _PLACEHOLDER.sub("%d", pattern).encode()

    def __call__(self, *ids: int) -> bytes:
        """The key's bytes for `ids` (none for a fixed name)."""
        return self._template % ids if ids else self._template

    def __str__(self) -> str:
        return f"{self.pattern} · {self.ttl} s"


trip = CachedKey("trip:{id}", 300)
trips_total = CachedKey("trips:total", 300)
trips_by_locality = CachedKey("trips:total:localities", 300)
trips_hourly = CachedKey("trips:hourly:{N}", 60, shared_generation=True)  # N: the hours asked
card_trips = CachedKey("trips:card:{id}", 300)
revenue_total = CachedKey("finance:total_revenue", 60)
revenue_by_locality = CachedKey("finance:revenue:by_localities", 60)
card_balance = CachedKey("card:{id}:balance", 300)
user_recharges = CachedKey("user:{id}:recharges", 300)
routes_all = CachedKey("routes:all", 300)
stations_all = CachedKey("stations:all", 300)
CACHED_KEYS = (
    trip,
    trips_total,
    trips_by_locality,
    trips_hourly,
    card_trips,
    revenue_total,
    revenue_by_locality,
    card_balance,
    user_recharges,
    routes_all,
    stations_all,
)

# Every aggregate a trip changes (trips:hourly:{N} through its family's one generation).
TRIP_AGGREGATES = (trips_total(), trips_by_locality(), revenue_total(), revenue_by_locality(), trips_hourly.family_name)

# How long a generation is kept; fills older than MAX_FILL_AGE are dropped anyway.
GENERATION_TTL = 600
MAX_FILL_AGE = 30.0
# Where every write's generation comes from (travel/cache.py's invalidation script).
GENERATION_SEQUENCE = b"gen:sequence"
GENERATION_PREFIX = b"gen:"
_SHARED_PREFIXES = tuple(key.family_name + b":" for key in CACHED_KEYS if key.shared_generation)


def generation(name: bytes) -> bytes:
    """The name of `name`'s generation (whatever its epoch); a shared family's keys share one."""
    for prefix in _SHARED_PREFIXES:
        head, shared, _ = name.partition(prefix)
        if shared:
            return GENERATION_PREFIX + head + prefix[:-1]
    return GENERATION_PREFIX + name


def in_epoch(epoch: int, key: bytes) -> bytes:
    """`key` in the cache epoch `epoch` (see travel/cache.py); epoch 0 keeps the plain names."""
    return key if epoch == 0 else b"e%d:%s" % (epoch, key)


# Key families, as /stats counts what Redis holds.
GENERATIONS_FAMILY = "gen:*"
OTHER_FAMILY = "other"
_FAMILY_PATTERNS = [
    (key.family, re.compile(re.escape(key.family).replace(r"\*", r"\d+").encode())) for key in CACHED_KEYS
]
_EPOCH_PREFIX = re.compile(rb"e\d+:")


def family(name: bytes) -> str:
    """The family label of a Redis name ("card:*:balance"), whatever its cache epoch."""
    if name == GENERATION_SEQUENCE:
        return GENERATION_SEQUENCE.decode()
    if name.startswith(GENERATION_PREFIX):
        return GENERATIONS_FAMILY
    if epoch := _EPOCH_PREFIX.match(name):
        name = name[epoch.end() :]
    return next((label for label, pattern in _FAMILY_PATTERNS if pattern.fullmatch(name)), OTHER_FAMILY)


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
