"""Throughput rounds: every scenario beside the ceiling app it is held against, interleaved.

A round runs each point once (wrk -t1, N connections); rounds repeat, and figures are the
median round's, ratios the median of per-round ratios (both sides measured in the same
round, on the same servers). A row claiming cache hits (or misses) whose answers say
otherwise is invalid: it is reported as such and the bench exits non-zero.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Any

from bench.figures import LoadResult
from bench.fixture import Target, issue_cards, post, send_all
from bench.scenarios import EXPECTED_CACHE, api_scenario, ceiling_scenario
from bench.wire import Scenario
from bench.wrk import run_wrk
from travel.startup.processes import ServerProcess

# What each scenario is held against (docs/design.md: performance), and the least ratio to reach.
CEILING_OF = {
    "hit": "redis-get",
    "uncached": "pg-select",
    "miss": "pg-select",
    "recharge": "pg-update",
    "boarding": "pg-update",
}
GOAL_RATIO = {"hit": 1.5, "uncached": 0.9, "recharge": 1.0, "boarding": 0.8}  # miss: shown, no goal
WRITE_P99_MS = 20.0
LOG_COST_MAX = 0.05
LOG_OFF = "A, request log off"
GUESSED_MISS_RATE = 10_000.0  # req/s, before any PostgreSQL ceiling was measured in this run


@dataclass
class Run:
    """One point to measure: a scenario on a server, at a concurrency level."""

    server: str  # "A", "B", LOG_OFF or "ceiling:<kind>"
    url: str
    scenario: Scenario
    connections: int
    target: Target | None = None
    prepare: Callable[[], Awaitable[None]] | None = None
    results: list[LoadResult] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.scenario.name


def refresh_hits(target: Target, key_prefix: str) -> Callable[[], Awaitable[None]]:
    """Before a hit run: invalidate its keys by writes (a recharge per card, one boarding), so
    that the warm-up fills them anew and none reaches its TTL inside the measured run."""
    fixture, auth = target.data, target.auth()
    writes = [post("/recharges", {"card_id": card, "amount": 100}, auth, unique_key=True) for card in fixture.card_ids]
    writes.append(
        post(
            "/trips",
            {
                "card_id": fixture.card_ids[0],
                "route_id": fixture.route_ids[0],
                "boarding_station_id": fixture.station_id,
            },
            auth,
        )
    )
    rounds = iter(range(1_000_000))

    async def refresh() -> None:
        answers = await send_all(target.url, writes, f"{key_prefix}-{next(rounds)}")
        if any(answer.status_code != 201 for answer in answers):
            raise RuntimeError(f"refreshing the hit keys of {target.label}: {sorted({a.status_code for a in answers})}")

    return refresh


def plan_runs(
    targets: list[Target],
    log_off: Target | None,
    ceilings: dict[str, ServerProcess],
    scenarios: tuple[str, ...],
    levels: tuple[int, ...],
    run_id: str,
) -> list[Run]:
    """The order of one round: each ceiling beside what it bounds, each scenario on A then B
    (and the hit scenario on A with its request log off, for the log's cost)."""
    runs: list[Run] = []
    fixture = targets[0].data
    for connections in levels:
        wanted = ["constant"] + [CEILING_OF[name] for name in scenarios if name in CEILING_OF]
        for name in ("", *scenarios):  # "": the constant app first
            kind = "constant" if not name else CEILING_OF.get(name)
            if kind in ceilings and kind in wanted:
                wanted = [k for k in wanted if k != kind]  # each ceiling once, beside the first it bounds
                runs.append(
                    Run(f"ceiling:{kind}", ceilings[kind].base_url, ceiling_scenario(kind, fixture), connections)
                )
            if not name:
                continue
            servers = [*targets, *([log_off] if log_off is not None and name == "hit" else [])]
            for target in servers:
                scenario = Scenario(name, ()) if name == "miss" else api_scenario(target, name)
                prepare = refresh_hits(target, f"{run_id}-refresh-{target.label}") if name == "hit" else None
                runs.append(Run(target.label, target.url, scenario, connections, target, prepare))
    return runs


def best_select_rate(runs: list[Run]) -> float:
    """The fastest one-SELECT rate measured so far: a miss (a GET, a SELECT, a SET) is no faster."""
    rates = [result.rps for run in runs if run.server == "ceiling:pg-select" for result in run.results]
    return max(rates, default=GUESSED_MISS_RATE)


async def miss_scenario(run: Run, runs: list[Run], duration: float, run_id: str) -> Scenario:
    """Cards issued just now, never read: enough for 1.5x the fastest rate this run has seen."""
    assert run.target is not None
    wanted = math.ceil(1.5 * best_select_rate(runs) * duration)
    cards = await issue_cards(run.target, run.target.data.user_ids[1:], wanted, f"{run_id}-miss-{len(run.results)}")
    return api_scenario(run.target, "miss", cards)


async def measure(run: Run, runs: list[Run], duration: float, warmup: float, run_id: str) -> None:
    """One round of one point; a result whose answers are not what the row claims is noted as invalid."""
    scenario, run_warmup = run.scenario, warmup
    if run.name == "miss":
        scenario, run_warmup = await miss_scenario(run, runs, duration, run_id), 0.0  # a warm-up would read them
    result = await run_wrk(
        run.url,
        scenario,
        run.connections,
        duration,
        run_warmup,
        f"{run_id}-{run.server}-{run.name}-{run.connections}-{len(run.results)}".replace(" ", ""),
        run.prepare,
    )
    expected = EXPECTED_CACHE.get(run.name) if run.target is not None else None
    if expected is not None and set(result.cache) != {expected}:
        run.invalid.append(
            f"{run.server} {run.name} @ {run.connections} conns, round {len(run.results) + 1}: "
            f"X-Cache {result.cache}, every answer should say {expected}"
        )
    run.results.append(result)


def representative(results: list[LoadResult]) -> LoadResult:
    """The round with the median throughput (its latencies belong to the same run)."""
    ordered = sorted(results, key=lambda r: r.rps)
    return ordered[(len(ordered) - 1) // 2]


def ratio_of_rounds(numerator: Run, denominator: Run) -> float | None:
    """Median over rounds of numerator/denominator, each pair measured in the same round."""
    pairs = [a.rps / b.rps for a, b in zip(numerator.results, denominator.results, strict=True) if b.rps]
    return median(pairs) if pairs else None


def find(runs: list[Run], server: str, scenario: str, connections: int) -> Run | None:
    return next(
        (r for r in runs if r.server == server and r.name == scenario and r.connections == connections and r.results),
        None,
    )


def ceiling_of(runs: list[Run], scenario: str, connections: int) -> Run | None:
    """The ceiling app's run that `scenario` is held against, at the same concurrency."""
    if scenario not in CEILING_OF:
        return None
    name = f"ceiling:{CEILING_OF[scenario]}"
    return find(runs, name, name, connections)


def throughput_points(runs: list[Run]) -> list[dict[str, Any]]:
    """Every point with its rounds, its median round, and its ratios (for the JSON and the report)."""
    points = []
    for run in runs:
        if not run.results:
            continue
        middle = representative(run.results)
        ceiling = ceiling_of(runs, run.name, run.connections) if run.server == "A" else None
        twin_a = find(runs, "A", run.name, run.connections) if run.server != "A" and run.target else None
        points.append(
            {
                "server": run.server,
                "scenario": run.name,
                "connections": run.connections,
                "median": asdict(middle) | {"rps": middle.rps},
                "rounds": [asdict(result) | {"rps": result.rps} for result in run.results],
                "ceiling": CEILING_OF.get(run.name) if ceiling else None,
                "of_ceiling": ratio_of_rounds(run, ceiling) if ceiling else None,
                "ratio_to_a": ratio_of_rounds(run, twin_a) if twin_a else None,
                "invalid": run.invalid,
            }
        )
    return points


def log_cost(runs: list[Run], connections: int) -> float | None:
    """1 - (hit req/s with the request log) / (without it), median over rounds."""
    on, off = find(runs, "A", "hit", connections), find(runs, LOG_OFF, "hit", connections)
    ratio = ratio_of_rounds(on, off) if on and off else None
    return None if ratio is None else 1.0 - ratio
