"""GET /stats (issue 13): this instance's request rates and latency per route, the cache at
work, Redis's figures and keys per family, the pool; public, and still answering without Redis."""

from __future__ import annotations

import asyncio
import bisect
import time
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from prometheus_client import Histogram

import cachekeys
from tests.support.api import json_body
from tests.support.polling import eventually_async
from tests.support.stack import Api, serve_api
from travel import models
from travel.observability import metrics, observer, stats
from travel.startup.embedded import EmbeddedStack
from travel.startup.processes import free_port

TOTALS = "/api/v1/trips/total"


async def read_stats(api: Api) -> dict[str, Any]:
    response = await api.http.get("/stats")  # public: no token
    body = json_body(response)
    msgspec.convert(body, models.Stats)  # the documented shape
    return body


def route(body: dict[str, Any], template: str) -> dict[str, Any]:
    return next(
        (entry for entry in body["routes"] if entry["route"] == template), {"requests": 0, "requests_per_second": 0.0}
    )


async def test_figures_move_as_traffic_moves(api: Api, redis_client: aioredis.Redis) -> None:
    before = await read_stats(api)
    sent = 40
    await asyncio.gather(*(api.http.get("/trips/total") for _ in range(sent)))
    after = await read_stats(api)
    assert route(after, TOTALS)["requests"] >= route(before, TOTALS)["requests"] + sent
    assert route(after, TOTALS)["requests_per_second"] > route(before, TOTALS)["requests_per_second"]
    totals = route(after, TOTALS)
    assert 0 < totals["p50_ms"] <= totals["p99_ms"] < 10_000
    # Each cached read is a hit or a miss (this test's server alone feeds this process's counts).
    hits, misses = (after["cache"][name] - before["cache"][name] for name in ("hits", "misses"))
    assert hits + misses == sent and hits >= 1 and misses >= 1
    assert 0 < after["cache"]["window_hit_ratio"] <= 1
    assert after["uptime_seconds"] >= before["uptime_seconds"] > 0
    redis = after["redis"]
    assert after["cache"]["status"] == "ok" and redis["used_memory"] > 0 and redis["connected_clients"] >= 1
    # The figures are Redis's own: this test's Redis (512 MB, a few keys) has evicted nothing.
    assert (
        redis["keyspace_hits"] > 0 and redis["evicted_keys"] == (await redis_client.info("stats"))["evicted_keys"] == 0
    )
    pool = after["pool"]
    # Between requests nothing waits for a connection.
    assert 1 <= pool["size"] <= pool["max_size"] == 20 and 0 <= pool["idle"] <= pool["size"] and pool["waiting"] == 0


@pytest.mark.slow
async def test_keys_are_counted_per_family_without_names(api: Api) -> None:
    await api.http.get("/trips/total")
    await api.http.get("/trips/hourly?hours=5")

    async def both_counted() -> dict[str, int] | None:
        families: dict[str, int] = (await read_stats(api))["redis"]["keys_by_family"]
        return families if families.get("trips:total") == 1 and families.get("trips:hourly:*") == 1 else None

    # The count is redone at most every SCAN_EVERY_SECONDS.
    families = await eventually_async(both_counted, stats.SCAN_EVERY_SECONDS + 5, "both families counted", every=0.2)
    assert cachekeys.OTHER_FAMILY not in families  # every name the service stores has its family


async def test_without_redis_the_cache_part_is_down_and_the_rest_answers(
    stack: EmbeddedStack, database_url: str
) -> None:
    async with serve_api(database_url, f"redis://127.0.0.1:{free_port()}/0") as api:
        assert json_body(await api.http.get("/trips/total"))["total_trips"] == 0
        body = await read_stats(api)
        assert body["cache"]["status"] == "down" and body["redis"] is None
        assert route(body, TOTALS)["requests"] >= 1 and body["pool"]["size"] >= 1


def one_bin(seconds: float, count: int) -> list[int]:
    """Latency bins (stats.BOUNDS) holding `count` answers of `seconds` each."""
    bins = [0] * (len(stats.BOUNDS) + 1)
    bins[bisect.bisect_left(stats.BOUNDS, seconds)] = count
    return bins


def test_percentiles_come_from_the_right_bins() -> None:
    recent = stats.Recent()
    second = int(time.monotonic())
    recent.add("/fast", second, 98, one_bin(0.001, 98), b"HIT")
    recent.add("/fast", second, 2, one_bin(0.100, 2), b"MISS")
    [figures] = recent.route_stats()
    assert figures.requests == 100
    assert abs(figures.p50_ms - 1.0) / 1.0 < 0.06 and abs(figures.p99_ms - 100.0) / 100.0 < 0.06
    assert recent.cache_stats("ok").window_hit_ratio == 0.98


async def test_tallied_answers_reach_prometheus_exactly_as_one_observation_each() -> None:
    """The observer tallies answers and flushes them in bulk: the histogram and counter it
    leaves are those that one observe() per answer would have left, bucket for bucket."""
    latencies = [0.0004, 0.0005, 0.00051, 0.001, 0.0049, 0.02, 0.3, 2.5, 7.0]
    answers = observer.Observer(None)
    exchange = observer.Exchange(lambda _: None, b"rid")
    exchange.status, exchange.cache = 200, b"HIT"
    for seconds in latencies:
        answers.answered("/tallied", "GET", "/tallied", exchange, seconds)
    answers.flush()
    expected = Histogram("expected_seconds", "the same, one observe() each", buckets=metrics.BUCKETS, registry=None)
    for seconds in latencies:
        expected.observe(seconds)

    def buckets(samples: list[Any]) -> list[tuple[str, float]]:
        return [(sample.labels["le"], sample.value) for sample in samples if sample.name.endswith("_bucket")]

    [got] = [metric for metric in metrics.LATENCY.collect()]
    ours = [sample for sample in got.samples if sample.labels.get("route") == "/tallied"]
    assert buckets(ours) == buckets(next(iter(expected.collect())).samples)
    assert metrics.REQUESTS.labels("/tallied", "GET", 200)._value.get() == len(latencies)


def test_key_families_come_from_cachekeys() -> None:
    assert cachekeys.family(cachekeys.card_balance(7)) == "card:*:balance"
    assert cachekeys.family(b"e12:" + cachekeys.trips_hourly(24)) == "trips:hourly:*"
    assert cachekeys.family(cachekeys.generation(cachekeys.trip(3))) == cachekeys.GENERATIONS_FAMILY
    assert cachekeys.family(cachekeys.GENERATION_SEQUENCE) == "gen:sequence"
    assert cachekeys.family(b"someone:else") == cachekeys.OTHER_FAMILY
