"""What each throughput scenario sends, as a cycle of requests (wire.Scenario).

hit: per-card balances and one hot aggregate, all cached (every answer must say X-Cache: HIT);
uncached: /users/count, read from PostgreSQL every time; miss: balances of cards never read
(every answer must say X-Cache: MISS); recharge and boarding: writes on random cards of 64;
mix: 90 % reads / 10 % writes. The ceilings get the same ids in the same order.
"""

from __future__ import annotations

import random

from bench.fixture import Fixture, Target, get, post
from bench.wire import Request, Scenario

API_SCENARIOS = ("hit", "uncached", "miss", "recharge", "boarding", "mix")
# What `make bench` runs unless told: the graded ones. `miss` reads tens of thousands of cards
# issued for it (its cards make wrk's script huge), so it runs only when asked for.
DEFAULT_SCENARIOS = ("hit", "uncached", "recharge", "boarding", "mix")
# The X-Cache value every measured answer of a scenario must carry (others are not checked).
EXPECTED_CACHE = {"hit": "HIT", "miss": "MISS"}
WRITE_DRAWS = 1024  # random cards drawn per lap of a write scenario


def write_requests(target: Target, kind: str, seed: int = 12) -> list[Request]:
    """One lap of writes on random cards of the fixture's 64: recharges with fresh
    Idempotency-Keys, or boardings alternating two routes per card (transfers after the
    first, as riders change buses, so that the cards' funds last the whole bench)."""
    fixture, auth = target.data, target.auth()
    chooser = random.Random(seed)  # the same draws in every run, for A and for B
    cards = [chooser.choice(fixture.write_cards) for _ in range(WRITE_DRAWS)]
    if kind == "recharge":
        return [post("/recharges", {"card_id": card, "amount": 100}, auth, unique_key=True) for card in cards]
    boarded: dict[int, int] = {}
    requests = []
    for card in cards:
        boarded[card] = boarded.get(card, 0) + 1
        route = fixture.route_ids[boarded[card] % 2]
        requests.append(
            post("/trips", {"card_id": card, "route_id": route, "boarding_station_id": fixture.station_id}, auth)
        )
    return requests


def hit_cycle(fixture: Fixture) -> list[Request]:
    """The two hits issue 4 names: per-card keys (coalescing across cards) and one hot aggregate."""
    return [r for card in fixture.card_ids for r in (get(f"/cards/{card}/balance"), get("/trips/total"))]


def api_scenario(target: Target, name: str, miss_cards: list[int] | None = None) -> Scenario:
    if name == "hit":
        cycle = hit_cycle(target.data)
    elif name == "uncached":
        cycle = [get("/users/count")]
    elif name == "miss":
        assert miss_cards, "the miss scenario reads cards issued for it"
        cycle = [get(f"/cards/{card}/balance") for card in miss_cards]
    elif name in ("recharge", "boarding"):
        cycle = write_requests(target, name)
    else:
        cycle = mix_cycle(target)
    return Scenario(name, tuple(cycle))


def mix_cycle(target: Target) -> list[Request]:
    """90 % reads, mostly hits (the writes' invalidations make the rest misses), 10 % writes."""
    fixture = target.data
    recharges, boardings = write_requests(target, "recharge", 4), write_requests(target, "boarding", 5)
    chooser = random.Random(4)  # the same mix in every run, for A and for B
    reader = (("Authorization", f"Bearer {target.token}"),)  # a user's recharges name a person: admin only
    cycle = []
    for n in range(2000):
        card = chooser.choice(fixture.card_ids)
        slot = n % 100
        if slot < 55:
            cycle.append(get(f"/cards/{card}/balance"))
        elif slot < 65:
            cycle.append(get("/trips/total"))
        elif slot < 72:
            cycle.append(get(f"/trips/card/{card}"))
        elif slot < 79:
            cycle.append(get("/finance/revenue"))
        elif slot < 85:
            cycle.append(get(f"/users/{fixture.user_ids[0]}/recharges", reader))
        elif slot < 90:
            cycle.append(get("/users/count"))
        elif slot < 95:
            cycle.append(recharges[n % len(recharges)])
        else:
            cycle.append(boardings[n % len(boardings)])
    chooser.shuffle(cycle)
    return cycle


def ceiling_scenario(kind: str, fixture: Fixture) -> Scenario:
    """The ceiling apps read (or, for the floor, update) the same cards the API scenarios use."""
    cards = fixture.write_cards if kind == "pg-update" else fixture.card_ids
    chooser = random.Random(12)
    if kind == "pg-update":
        cards = [chooser.choice(cards) for _ in range(WRITE_DRAWS)]
    return Scenario(f"ceiling:{kind}", tuple(Request("GET", f"/ceiling/{card}") for card in cards))
