"""The request log, /metrics and single-flight misses of `python server.py` as deployed: a
real process (several workers where it matters), real signals, real sockets."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest
import redis.asyncio as aioredis

import cachekeys
from tests.support.polling import eventually_async
from tests.support.servers import StartServer, api_url
from tests.support.stack import register_test_tokens
from travel.observability import logs
from travel.observability.observer import FLUSH_SECONDS
from travel.startup.embedded import EmbeddedStack
from travel.startup.processes import ServerProcess

pytestmark = pytest.mark.slow  # each test starts `python server.py` (two workers where it matters)


def access_lines(output: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [line["request"] for line in lines if line.get("logger") == "travel.access"]


async def test_sigterm_loses_no_request_line_and_splits_none(served: ServerProcess) -> None:
    """Lines still in the buffer when SIGTERM comes are written at shutdown, each once, in order."""
    ids = [f"sigterm-{n}" for n in range(50)]  # under 32 KiB: only the timer or the shutdown writes them
    async with httpx.AsyncClient(base_url=api_url(served), timeout=10) as http:
        started = time.monotonic()
        for rid in ids:
            assert (await http.get("/routes", headers={"X-Request-ID": rid})).status_code == 200
    written_before = served.printed()
    if time.monotonic() - started < logs.FLUSH_SECONDS:  # the timer cannot have fired yet
        assert "sigterm-" not in written_before
    status, output = served.stop(), served.printed()

    assert status == 0, output
    assert "Traceback" not in output
    logged = [line for line in access_lines(output) if str(line["id"]).startswith("sigterm-")]
    assert [line["id"] for line in logged] == ids
    assert {(line["route"], line["status"]) for line in logged} == {("/api/v1/routes", 200)}


def served_total(metrics_text: str, route: str) -> float:
    pattern = rf'^travel_requests_total\{{method="GET",route="{re.escape(route)}",status="200"\}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics_text, re.MULTILINE))


async def test_metrics_with_two_workers_sum_both(
    database_url: str, stack: EmbeddedStack, run_server: StartServer
) -> None:
    await register_test_tokens(database_url)
    server = run_server(DATABASE_URL=database_url, REDIS_URL=stack.redis.url, WORKERS="2")
    server.wait_healthy()
    workers: set[str] = set()
    answered = 0
    async with httpx.AsyncClient(base_url=api_url(server), timeout=10, headers={"Connection": "close"}) as http:
        while len(workers) < 2 or answered < 100:  # new connections land on either worker
            response = await http.get("/routes")
            assert response.status_code == 200
            workers.add(response.headers["x-request-id"].split("-")[0])  # each process's own prefix
            answered += 1
            assert answered < 2000, "one worker took every connection"

        async def scraped_all() -> str | None:  # a worker adds its tallies at most FLUSH_SECONDS late
            text = (await http.get(server.base_url + "/metrics")).text
            return text if served_total(text, "/api/v1/routes") == answered else None

        await eventually_async(scraped_all, 3 * FLUSH_SECONDS, "a scrape that counts both workers' answers")
        scrapes = [(await http.get(server.base_url + "/metrics")).text for _ in range(6)]
    status, output = server.stop(), server.printed()

    assert [served_total(text, "/api/v1/routes") for text in scrapes] == [answered] * 6, output[-3000:]
    assert all(re.search(r"^travel_db_pool_size \d", text, re.MULTILINE) for text in scrapes)
    assert status == 0, output


BURST_ADDRESSES = 4  # loopback addresses the burst comes from: each under the per-address cap (512)


async def burst(port: int, path: str, clients: int) -> list[int]:
    """`clients` connections opened first, then each sends one GET at once; their statuses.
    Many clients: they come from several loopback addresses (the fairness bound is not tested here)."""
    connections = await asyncio.gather(
        *(
            asyncio.open_connection("127.0.0.1", port, local_addr=(f"127.0.0.{1 + n % BURST_ADDRESSES}", 0))
            for n in range(clients)
        )
    )
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    for _, writer in connections:
        writer.write(request)

    async def status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        answer = await reader.read()
        writer.close()
        return int(answer.split(b" ", 2)[1])

    return list(await asyncio.wait_for(asyncio.gather(*(status(reader, writer) for reader, writer in connections)), 60))


async def test_a_burst_on_a_cold_key_is_one_load_and_all_200(
    served: ServerProcess, redis_client: aioredis.Redis
) -> None:
    metrics_url = served.base_url + "/metrics"

    def loads(text: str) -> float:
        found = re.search(r"^travel_cache_loads_total (\S+)$", text, re.MULTILINE)
        assert found
        return float(found.group(1))

    async with httpx.AsyncClient(timeout=10) as http:
        before = loads((await http.get(metrics_url)).text)
        await redis_client.delete(cachekeys.trips_total())
        statuses = await burst(served.port, "/api/v1/trips/total", 800)
        after = loads((await http.get(metrics_url)).text)

    assert {code: statuses.count(code) for code in set(statuses)} == {200: 800}
    assert after - before == 1
