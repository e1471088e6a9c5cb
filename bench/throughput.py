"""Throughput rounds: every scenario beside the anchors it is held against, interleaved.

A round runs each point once (wrk -t1, N connections; pgbench for PostgreSQL's floor); rounds
repeat, and figures are the median round's, ratios the median of per-round ratios (both sides
measured in the same round, on the same servers). The anchors (DESIGN.md §9): the
minimal Python apps (bench/ceilings.py), PostgreSQL's floor (bench/pgbench.py) and the Go
version (go/), which runs the same scenarios as the API. A row claiming cache hits (or
misses) whose answers say otherwise is invalid: it is reported as such and the bench exits
non-zero. Each row also carries the CPU its servers spent per answer (bench/cpu.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Any

from bench.cpu import CpuProbe, per_request_us
from bench.figures import LoadResult
from bench.fixture import Target, issue_cards, post, send_all
from bench.pgbench import PgBench
from bench.scenarios import EXPECTED_CACHE, api_scenario, ceiling_scenario
from bench.wire import Scenario
from bench.wrk import run_wrk
from travel.startup.processes import ServerProcess

GO = "Go"  # the Go version's server label
PGBENCH = "ceiling:pgbench"
# The anchors each scenario is shown beside (ratios in the report), first to last in a round's
# order; goals.py grades against some of them (DESIGN.md §9).
ANCHORS_OF = {
    "hit": ("ceiling:constant", "ceiling:redis-get", GO),
    "uncached": ("ceiling:pg-select", GO),
    "miss": ("ceiling:pg-select",),
    "recharge": (PGBENCH, "ceiling:pg-update", GO),
    "boarding": (PGBENCH, "ceiling:pg-update", GO),
}
ANCHOR_NAMES = {
    "ceiling:constant": "constant-answer app",
    "ceiling:redis-get": "one-GET app",
    "ceiling:pg-select": "one-SELECT app",
    "ceiling:pg-update": "one-UPDATE Python app",
    PGBENCH: "pgbench floor",
    GO: "Go version",
}
GO_SCENARIOS = ("hit", "uncached", "recharge", "boarding")  # what the Go version serves of them
LOG_OFF = "A, request log off"
GUESSED_MISS_RATE = 10_000.0  # req/s, before any PostgreSQL ceiling was measured in this run

# A measurement other than wrk (pgbench): (duration, warm-up, CPU probe) -> result.
Load = Callable[[float, float, CpuProbe | None], Awaitable[LoadResult]]


@dataclass
class Run:
    """One point to measure: a scenario on a server, at a concurrency level."""

    server: str  # "A", "B", LOG_OFF, GO, "ceiling:<kind>" or PGBENCH
    url: str
    scenario: Scenario
    connections: int
    target: Target | None = None
    prepare: Callable[[], Awaitable[None]] | None = None
    cpu: CpuProbe | None = None
    load: Load | None = None  # instead of wrk
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
    go: Target | None = None,
    pgbench: PgBench | None = None,
    probes: dict[str, CpuProbe] | None = None,
) -> list[Run]:
    """The order of one round: each anchor once, before the first scenario it bounds, then the
    scenario on A and B (on A with its request log off too for hits, for the log's cost), then
    on the Go version."""
    runs: list[Run] = []
    fixture = targets[0].data
    probes = probes or {}
    for connections in levels:
        placed: set[str] = set()
        for name in ("", *scenarios):  # "": the constant app first
            for anchor in ("ceiling:constant",) if not name else ANCHORS_OF.get(name, ()):
                if anchor in placed or not anchor.startswith("ceiling:"):
                    continue
                placed.add(anchor)
                kind = anchor.removeprefix("ceiling:")
                if anchor == PGBENCH and pgbench is not None:
                    load = functools.partial(pgbench.run, fixture.write_cards, connections)
                    runs.append(Run(anchor, "", Scenario(anchor, ()), connections, cpu=probes.get(anchor), load=load))
                elif kind in ceilings:
                    scenario = ceiling_scenario(kind, fixture)
                    runs.append(Run(anchor, ceilings[kind].base_url, scenario, connections, cpu=probes.get(anchor)))
            if not name:
                continue
            servers = [*targets, *([log_off] if log_off is not None and name == "hit" else [])]
            servers += [go] if go is not None and name in GO_SCENARIOS else []
            for target in servers:
                scenario = Scenario(name, ()) if name == "miss" else api_scenario(target, name)
                prepare = refresh_hits(target, f"{run_id}-refresh-{target.label}") if name == "hit" else None
                runs.append(
                    Run(target.label, target.url, scenario, connections, target, prepare, probes.get(target.label))
                )
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
    if run.load is not None:
        run.results.append(await run.load(duration, warmup, run.cpu))
        return
    result = await run_wrk(
        run.url,
        scenario,
        run.connections,
        duration,
        run_warmup,
        f"{run_id}-{run.server}-{run.name}-{run.connections}-{len(run.results)}".replace(" ", ""),
        run.prepare,
        run.cpu,
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


def anchor_run(runs: list[Run], anchor: str, scenario: str, connections: int) -> Run | None:
    """The anchor's run at the same concurrency (the Go version's of the same scenario)."""
    return find(runs, anchor, scenario if anchor == GO else anchor, connections)


def throughput_points(runs: list[Run]) -> list[dict[str, Any]]:
    """Every point with its rounds, its median round, its ratios and its CPU per answer (for the
    JSON and the report)."""
    points = []
    for run in runs:
        if not run.results:
            continue
        middle = representative(run.results)
        anchors: dict[str, float | None] = {}
        if run.server == "A":
            for anchor in ANCHORS_OF.get(run.name, ()):
                if (other := anchor_run(runs, anchor, run.name, run.connections)) is not None:
                    anchors[anchor] = ratio_of_rounds(run, other)
        twin_a = find(runs, "A", run.name, run.connections) if run.server != "A" and run.target else None
        points.append(
            {
                "server": run.server,
                "scenario": run.name,
                "connections": run.connections,
                "median": asdict(middle) | {"rps": middle.rps},
                "rounds": [asdict(result) | {"rps": result.rps} for result in run.results],
                "cpu_us": per_request_us(middle.cpu_s, middle.requests),
                "anchors": anchors,  # anchor server -> A / anchor, median of per-round ratios
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
