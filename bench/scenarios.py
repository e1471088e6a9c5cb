"""What each throughput scenario sends, as a cycle of requests (wire.Scenario).

hit: per-card balances and one hot aggregate, all cached (every answer must say X-Cache: HIT);
uncached: /users/count, read from PostgreSQL every time; miss: balances of cards never read
(every answer must say X-Cache: MISS); recharge and boarding: writes on random cards of 64;
mix: the traffic mix of bench/mix.py (90 % reads / 10 % writes). The ceilings get the same ids
in the same order.
"""

from __future__ import annotations

import itertools
import random

from bench.fixture import Fixture, Target, get, post
from bench.mix import MIX
from bench.wire import Request, Scenario

API_SCENARIOS = ("hit", "uncached", "miss", "recharge", "boarding", "mix")
# What `make bench` runs unless told: the graded ones. `miss` reads tens of thousands of cards
# issued for it (its cards make wrk's script huge), so it runs only when asked for.
DEFAULT_SCENARIOS = ("hit", "uncached", "recharge", "boarding", "mix")
# The X-Cache value every measured answer of a scenario must carry (others are not checked).
EXPECTED_CACHE = {"hit": "HIT", "miss": "MISS"}
WRITE_DRAWS = 1024  # random cards drawn per lap of a write scenario
MIX_CYCLE = 2000  # requests per lap of the mix


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
    """bench/mix.py's kinds in their shares, shuffled: reads of the fixture's cards and users
    (mostly hits; the writes' invalidations make the rest misses), the operator's with the
    admin token, and writes on random cards of 64."""
    fixture = target.data
    writes = {"recharge": write_requests(target, "recharge", 4), "boarding": write_requests(target, "boarding", 5)}
    chooser = random.Random(4)  # the same mix in every run, for A and for B
    slots = [kind for kind in MIX for _ in range(kind.weight)]
    turns = {kind.name: itertools.count() for kind in MIX}
    cycle = []
    for n in range(MIX_CYCLE):
        kind = slots[n % len(slots)]
        turn = next(turns[kind.name])
        if kind.method == "POST":
            laps = writes[kind.name]
            cycle.append(laps[turn % len(laps)])
        else:
            path = kind.paths[turn % len(kind.paths)]
            filled = path.format(card=chooser.choice(fixture.card_ids), user=chooser.choice(fixture.user_ids))
            cycle.append(get(filled, target.auth() if kind.role == "operator" else ()))
    chooser.shuffle(cycle)
    return cycle


def ceiling_scenario(kind: str, fixture: Fixture) -> Scenario:
    """The ceiling apps read (or, for the floor, update) the same cards the API scenarios use."""
    cards = fixture.write_cards if kind == "pg-update" else fixture.card_ids
    chooser = random.Random(12)
    if kind == "pg-update":
        cards = [chooser.choice(cards) for _ in range(WRITE_DRAWS)]
    return Scenario(f"ceiling:{kind}", tuple(Request("GET", f"/ceiling/{card}") for card in cards))
