"""The tail: open-loop runs at a fixed rate, a sustained mixed load, a burst on one cold key.

- Open loop: hit, uncached, recharge and boarding at ~70 % of the req/s their median round
  reached, latencies from each request's intended start (openloop.py): p50/p99/p99.9/max.
- Sustained mix: bench/mix.py's traffic (90 % reads / 10 % writes) for a minute (wrk); any
  answer slower than 1 s, or any whole second without an answer, is a stall.
- Burst: 800 requests at once for one key that a boarding just made cold: how many
  PostgreSQL loads (travel_cache_loads_total when the API counts them, else the MISS
  answers: one load each), and every answer other than 200.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

from bench.figures import LoadResult, summarize, tally
from bench.fixture import Target, get, metric_total, send_all
from bench.latency import Writer
from bench.openloop import run_open_loop
from bench.scenarios import EXPECTED_CACHE, api_scenario, hit_cycle
from bench.throughput import Run, find, refresh_hits, representative
from bench.wire import Connection, x_cache
from bench.wrk import run_wrk

OPEN_LOOP_SCENARIOS = ("hit", "uncached", "recharge", "boarding")
OPEN_LOOP_SHARE = 0.7
STALL_MS = 1000.0
BURST = 800
BURST_ADDRESSES = 4  # 200 connections each: under the API's default cap of 512 per address
BURST_PATH = "/trips/total"


def figures(result: LoadResult) -> dict[str, Any]:
    return asdict(result) | {"rps": result.rps}


async def open_loop_rows(
    target: Target, runs: list[Run], connections: int, seconds: float, run_id: str
) -> list[dict[str, Any]]:
    """Each scenario at OPEN_LOOP_SHARE of its measured maximum (the median round at `connections`)."""
    rows = []
    for name in OPEN_LOOP_SCENARIOS:
        run = find(runs, "A", name, connections)
        if run is None:
            continue
        rate = OPEN_LOOP_SHARE * representative(run.results).rps
        if name == "hit":
            await refresh_hits(target, f"{run_id}-open-refresh")()
            await send_all(target.url, list(hit_cycle(target.data)), run_id)  # the fills, before the clock
        result, lag = await run_open_loop(
            target.url, api_scenario(target, name), rate, seconds, f"{run_id}-open-{name}", connections
        )
        expected = EXPECTED_CACHE.get(name)
        invalid = (
            [f"open loop {name}: X-Cache {result.cache}, every answer should say {expected}"]
            if expected is not None and set(result.cache) != {expected}
            else []
        )
        lag_p99 = summarize(lag)["p99_ms"]
        rows.append(
            {"scenario": name, "rate": rate, **figures(result), "generator_lag_p99_ms": lag_p99, "invalid": invalid}
        )
    return rows


async def sustained_mix(target: Target, connections: int, seconds: float, run_id: str) -> dict[str, Any]:
    """The mix for `seconds` at `connections` (wrk); stalls: answers over 1 s, silent seconds."""
    result = await run_wrk(target.url, api_scenario(target, "mix"), connections, seconds, 0.0, f"{run_id}-sustained")
    return figures(result) | {
        "stalled": result.max_ms > STALL_MS or result.silent_seconds > 0,
        "connections": connections,
    }


async def cold_key_burst(target: Target, run_id: str) -> dict[str, Any]:
    """BURST concurrent GETs of a key a boarding just made cold, over BURST open connections:
    many clients, so on loopback they come from BURST_ADDRESSES addresses, each under the
    API's per-address cap of connections (the fairness bound is not what this measures)."""
    loopback = urlsplit(target.url).hostname in ("127.0.0.1", "localhost")
    sources = [f"127.0.0.{1 + n % BURST_ADDRESSES}" if loopback else None for n in range(BURST)]
    connections = [Connection(target.url, source) for source in sources]
    await asyncio.gather(*(connection.open() for connection in connections))
    writer = Writer(target, f"{run_id}-burst")
    try:
        loads_before = await metric_total(target, "travel_cache_loads_total")
        await writer.board()  # invalidates every trip aggregate
        answers = await asyncio.gather(
            *(connection.send(get(BURST_PATH)) for connection in connections), return_exceptions=True
        )
        loads_after = await metric_total(target, "travel_cache_loads_total")
    finally:
        await writer.aclose()
        for connection in connections:
            connection.close()
    statuses: dict[str, int] = {}
    cache: dict[str, int] = {}
    for answer in answers:
        if isinstance(answer, BaseException):
            tally(statuses, type(answer).__name__)
        else:
            tally(statuses, str(answer[0]))
            tally(cache, x_cache(answer[1]))
    counted = loads_before is not None and loads_after is not None
    loads = int(loads_after - loads_before) if counted else cache.get("MISS", 0)  # type: ignore[operator]
    not_ok = sum(n for status, n in statuses.items() if status != "200")
    return {
        "path": BURST_PATH,
        "requests": BURST,
        "statuses": statuses,
        "cache": cache,
        "loads": loads,
        "loads_from": "travel_cache_loads_total" if counted else "X-Cache: MISS answers",
        "not_200": not_ok,
        "passed": loads == 1 and not_ok == 0,
    }
