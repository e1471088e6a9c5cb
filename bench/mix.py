"""The traffic mix: the kinds of request a transit system's users send, and how many of each.

The one definition that both the bench's sustained mix (bench/scenarios.py: a shuffled cycle
for wrk) and Locust (bench/locustfile.py: a user class per role, a task per kind) read. A
kind's weight is its requests in every 100 of the mix (90 reads, 10 writes); its paths are
taken in turn, and `{card}` and `{user}` are filled in by whoever sends it.

Roles: riders read their cards (public); the operator's dashboard reads the totals and a
person's data with the admin token; recharge points recharge cards; validators board them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["rider", "operator", "recharge_point", "validator"]


@dataclass(frozen=True)
class Kind:
    name: str
    role: Role
    weight: int  # requests of this kind in every 100
    method: str
    paths: tuple[str, ...]  # under /api/v1, taken in turn


MIX = (
    Kind("card balance", "rider", 55, "GET", ("/cards/{card}/balance",)),
    Kind("card trips", "rider", 7, "GET", ("/trips/card/{card}",)),
    Kind(
        "totals",
        "operator",
        17,
        "GET",
        ("/trips/total", "/finance/revenue", "/trips/total/localities", "/finance/revenue/localities"),
    ),
    Kind("user counts", "operator", 5, "GET", ("/users/count", "/users/active/count", "/users/latest")),
    Kind("user recharges", "operator", 6, "GET", ("/users/{user}/recharges",)),
    Kind("recharge", "recharge_point", 5, "POST", ("/recharges",)),
    Kind("boarding", "validator", 5, "POST", ("/trips",)),
)
assert sum(kind.weight for kind in MIX) == 100, "weights are requests in every 100"


def role_weight(role: Role) -> int:
    """The role's share of the mix's requests (its kinds' weights summed)."""
    return sum(kind.weight for kind in MIX if kind.role == role)


def kinds_of(role: Role) -> tuple[Kind, ...]:
    return tuple(kind for kind in MIX if kind.role == role)
