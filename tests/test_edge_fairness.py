"""Fair to every client (docs/design.md: the edge; issue 20), against `python server.py` in a
process of its own: slow readers, a connection hog, a failed-authentication flood, h2c and
split trailers. The attacks are tests/support/attacks.py's; /health is probed from another
loopback address (127.0.0.2), as another client would be. Loopback only; every wait is bounded."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from tests.support import attacks
from tests.support.polling import eventually_async
from tests.support.stack import fresh_database
from tests.test_edge import SLACK, Served, read_all, serving
from travel.edge import protocol
from travel.startup.embedded import EmbeddedStack

pytestmark = pytest.mark.slow  # servers of their own, attacks of thousands of sockets held for seconds

MiB = 1024 * 1024
# The targets are 200 ms for /health under the slow readers and 1 s under the hog, met
# with the server pinned to a core of its own (README: Reliability). Here the server shares two
# cores with the attack, the prober and whatever else runs: the bound allows that, and the
# unbounded edge still fails it (2 s and more under the slow readers, no answer under the hog).
HEALTH_BOUND = 1.0
HOG_HEALTH_BOUND = 1.0
TCP_GROWTH_BOUND = 128 * MiB
# Enough stations that one answer (~35 KB) is more than a capped send buffer takes.
MANY_STATIONS = """
INSERT INTO stations (name, station_code, station_type, location_id)
SELECT 'Estación de prueba ' || g || ' con un nombre tan largo como los de verdad', 'TS-' || g, 'TRUNK',
       (SELECT min(location_id) FROM locations)
FROM generate_series(1, 300) g
"""


MANY_STATIONS_REDIS_DB = 3  # the session's Redis is shared, and its /stations key with it


async def many_stations_database(stack: EmbeddedStack, prefix: str) -> tuple[str, str]:
    """A database whose /stations answer is larger than a capped send buffer takes, and a
    Redis database of its own (emptied): another test's cached four stations would be small."""
    url = await fresh_database(stack, prefix)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(MANY_STATIONS)
    finally:
        await conn.close()
    redis_url = stack.redis.url.rsplit("/", 1)[0] + f"/{MANY_STATIONS_REDIS_DB}"
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    return url, redis_url


@pytest.fixture(scope="module")
async def served(
    stack: EmbeddedStack, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Served]:
    """One server with the defaults, for the attacks that leave nothing behind."""
    database_url, redis_url = await many_stations_database(stack, "fair")
    with serving(database_url, redis_url, tmp_path_factory.mktemp("fair") / "server.log") as running:
        yield running


def refusals(served: Served) -> dict[str, float]:
    """travel_edge_refusals_total by reason, from /metrics (asked from 127.0.0.2)."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=10) as client:
        text = client.get(f"http://{served.host}:{served.port}/metrics").text  # another address: never refused
    return {
        match[1]: float(match[2])
        for match in re.finditer(r'travel_edge_refusals_total\{reason="([^"]+)"\} (\S+)', text)
    }


async def exchange(host: str, port: int, request: bytes, timeout: float = 5) -> bytes:
    """`request` sent on a connection of its own; all that comes back until the service closes it."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    try:
        return await read_all(reader, timeout)
    finally:
        writer.close()


HEALTH = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n"


def refused_with(answer: bytes) -> object:
    """The code of a connection refused with a 503 problem (to retry after a second)."""
    assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1\r\n" in answer.lower(), answer[:300]
    return problem_of(answer)["code"]


def problem_of(answer: bytes) -> dict[str, object]:
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"content-type: application/problem+json" in head.lower(), head
    assert b"connection: close" in head.lower(), head
    problem: dict[str, object] = json.loads(body)
    return problem


# ---------------------------------------------------------------- slow readers
@pytest.mark.parametrize(
    ("sockets", "depth", "path"),
    [(1000, 16, "/api/v1/stations"), (4000, 1, "/api/v1/stations"), (1000, 64, "/api/v1/stations")],
    ids=["1000x16", "4000x1", "1000x64"],
)
async def test_slow_readers_leave_health_fast_and_kernel_memory_bounded(
    served: Served, sockets: int, depth: int, path: str
) -> None:
    """Sockets with a 1 KiB receive buffer, their requests pipelined and never read, held past
    the keep-alive timeout: before issue 20, 1.2 GiB of kernel TCP memory and /health 2 s."""
    refused = sum(refusals(served).values())
    seen = await attacks.slow_readers(served.host, served.port, sockets=sockets, depth=depth, path=path, hold=7)
    assert sum(refusals(served).values()) > refused  # it was bounded, not merely small
    assert not seen.failures, seen
    assert seen.slowest < HEALTH_BOUND, seen
    assert seen.tcp_growth < TCP_GROWTH_BOUND, seen


async def test_a_slow_reader_is_served_no_further_and_reset_after_the_read_timeout(
    stack: EmbeddedStack, template_url: str, tmp_path: Path
) -> None:
    database_url, redis_url = await many_stations_database(stack, "stall")
    with serving(database_url, redis_url, tmp_path / "server.log", READ_TIMEOUT="1") as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.connect((server.host, server.port))
        sock.sendall(b"GET /api/v1/stations HTTP/1.1\r\nHost: x\r\n\r\n" * protocol.MAX_PIPELINED)
        started = time.monotonic()
        # Unread, it is reset once stalled for the bound (1 s) and a sweep.
        await eventually_async(lambda: refusals(server).get("send timeout"), 15, "the slow reader reset")
        assert time.monotonic() - started < 1 + SLACK + 2
        sock.settimeout(10)
        received = 0
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += len(chunk)
        sock.close()
        assert received < 4 * 40_000, received  # at most a few answers were made for it


# ---------------------------------------------------------------- connection slots
@pytest.mark.parametrize(
    "env", [{}, {"MAX_CONNECTIONS_PER_ADDRESS": "10000"}], ids=["per-address-cap", "oldest-idle-makes-room"]
)
async def test_one_address_holding_4100_connections_leaves_another_answered(
    stack: EmbeddedStack, template_url: str, tmp_path: Path, env: dict[str, str]
) -> None:
    """Before issue 20: 15 of 15 probes closed unanswered at the worker's cap."""
    database_url = await fresh_database(stack, "hog")
    with serving(database_url, stack.redis.url, tmp_path / "server.log", **env) as server:
        seen = await attacks.connection_hog(server.host, server.port, connections=4100, hold=5)
        assert len(seen.probes) >= 5 and not seen.failures, seen
        assert seen.slowest < HOG_HEALTH_BOUND, seen
        counted = refusals(server)
        if env:
            assert counted.get("idle closed for a new connection", 0) >= 1, counted
        else:
            assert counted.get("connections per address", 0) >= 1, counted


async def test_past_the_per_address_cap_a_503_problem_is_answered_and_counted(
    stack: EmbeddedStack, template_url: str, tmp_path: Path
) -> None:
    database_url = await fresh_database(stack, "peraddr")
    with serving(database_url, stack.redis.url, tmp_path / "server.log", MAX_CONNECTIONS_PER_ADDRESS="5") as server:
        held = [await asyncio.open_connection(server.host, server.port) for _ in range(5)]
        assert refused_with(await exchange(server.host, server.port, HEALTH)) == "TOO_MANY_CONNECTIONS"
        assert await attacks.probe_health(server.host, server.port, source="127.0.0.2") < 1.0  # another address
        assert refusals(server)["connections per address"] >= 1
        for _, held_writer in held:
            held_writer.close()


async def test_at_the_workers_cap_the_oldest_idle_connection_makes_room_else_a_503_problem(
    stack: EmbeddedStack, template_url: str, tmp_path: Path
) -> None:
    cap = 20
    database_url = await fresh_database(stack, "cap")
    log = tmp_path / "server.log"
    with serving(
        database_url, stack.redis.url, log, MAX_CONNECTIONS=str(cap), MAX_CONNECTIONS_PER_ADDRESS="100"
    ) as server:
        idle = [await asyncio.open_connection(server.host, server.port) for _ in range(cap)]
        await asyncio.sleep(0.2)
        assert await attacks.probe_health(server.host, server.port) < 1.0  # admitted: the oldest idle one made room
        assert await read_all(idle[0][0], timeout=5) == b""  # ... closed
        for _, writer in idle:
            writer.close()
        await asyncio.sleep(0.5)
        # Connections in the middle of a request are not idle: none can make room.
        busy = [await asyncio.open_connection(server.host, server.port) for _ in range(cap)]
        for _, writer in busy:
            writer.write(b"GET /api/v1/health HTTP/1.1\r\n")
        await asyncio.sleep(0.2)
        assert refused_with(await exchange(server.host, server.port, HEALTH)) == "CONNECTIONS_FULL"
        for _, busy_writer in busy:
            busy_writer.close()
        await asyncio.sleep(0.5)
        counted = refusals(server)
        assert counted["idle closed for a new connection"] >= 1 and counted["connections per worker"] >= 1, counted


# ---------------------------------------------------------------- failed authentication
async def test_a_failed_authentication_flood_gets_429_and_valid_tokens_keep_working(
    stack: EmbeddedStack, template_url: str, tmp_path: Path
) -> None:
    database_url = await fresh_database(stack, "authflood")
    limit = 20
    with serving(database_url, stack.redis.url, tmp_path / "server.log", AUTH_FAILURES_PER_MINUTE=str(limit)) as server:
        base = f"http://{server.host}:{server.port}/api/v1"
        admin = {"Authorization": "Bearer admin-token-for-tests"}
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            assert (await http.get("/users/latest", headers=admin)).status_code == 200
            statuses = []
            for _ in range(limit + 30):
                response = await http.get("/users/latest", headers={"Authorization": f"Bearer {secrets.token_hex(16)}"})
                statuses.append(response.status_code)
            assert statuses[:limit] == [401] * limit and set(statuses[limit:]) == {429}, statuses
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["code"] == "TOO_MANY_FAILED_AUTHENTICATIONS"
            assert 1 <= int(response.headers["retry-after"]) <= 60
            assert (await http.get("/users/latest", headers=admin)).status_code == 200  # the same address
            # A valid token this instance has not yet seen works too (403: a validator may not read users).
            validator = {"Authorization": "Bearer validator-token-for-tests"}
            assert (await http.get("/users/latest", headers=validator)).status_code == 403
            assert (await http.get("/users/latest")).status_code == 429  # no token at all is a failure too


async def test_a_token_registered_after_it_was_refused_works_at_once(
    stack: EmbeddedStack, template_url: str, tmp_path: Path
) -> None:
    """An unknown token is cached as unknown; a registration NOTIFYs every instance."""
    database_url = await fresh_database(stack, "newtoken")
    with serving(database_url, stack.redis.url, tmp_path / "server.log") as server:
        token = secrets.token_urlsafe(32)
        url = f"http://{server.host}:{server.port}/api/v1/users/latest"
        async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {token}"}) as http:
            assert (await http.get(url)).status_code == 401
            conn = await asyncpg.connect(database_url)
            try:
                await conn.execute(
                    "SELECT register_token($1, 'admin', 'late', NULL)", hashlib.sha256(token.encode()).digest()
                )
            finally:
                await conn.close()
            started = time.monotonic()
            while (await http.get(url)).status_code != 200:
                assert time.monotonic() - started < 1.0, "a registered token was still refused after 1 s"
                await asyncio.sleep(0.02)


# ---------------------------------------------------------------- h2c, trailers, bad requests
async def test_an_h2c_upgrade_is_answered_and_closed_and_nothing_pipelined_hangs(served: Served) -> None:
    answer = await exchange(  # before issue 20: the second request hung, the connection open
        served.host,
        served.port,
        b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1 ") == 1, answer[:300]
    assert b"connection: close" in answer.lower()


async def test_an_upgrade_with_a_body_is_refused(served: Served) -> None:
    answer = await exchange(
        served.host,
        served.port,
        b"POST /api/v1/recharges HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        timeout=5,
    )
    assert answer.startswith(b"HTTP/1.1 400 ") and problem_of(answer)["code"] == "UPGRADE_REFUSED", answer[:300]


TRAILED = (
    b"POST /api/v1/recharges HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token-for-tests\r\n"
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'1d\r\n{"card_id": 1, "amount": 100}\r\n0\r\nIdempotency-Key: from-a-trailer\r\n\r\n'
)


@pytest.mark.parametrize(
    "cuts",
    [
        (TRAILED.index(b"\r\n\r\n") + 4,),  # the head, then the body and its trailer
        (TRAILED.index(b"\r\n\r\n") + 4, TRAILED.index(b"0\r\nIdem")),  # head, chunk, then the rest
        (TRAILED.index(b"1d\r\n") + 10, TRAILED.index(b"Idem") + 3),  # mid-chunk, mid-trailer
    ],
    ids=["head|body", "head|chunk|end", "mid-chunk|mid-trailer"],
)
async def test_a_trailer_is_refused_however_the_body_is_split(served: Served, cuts: tuple[int, ...]) -> None:
    reader, writer = await asyncio.open_connection(served.host, served.port)
    for start, end in zip((0, *cuts), (*cuts, len(TRAILED)), strict=True):
        writer.write(TRAILED[start:end])
        await writer.drain()
        await asyncio.sleep(0.1)  # each piece its own read
    answer = await read_all(reader, timeout=10)
    writer.close()
    assert b"HTTP/1.1 201" not in answer, answer[:300]
    assert answer.startswith(b"HTTP/1.1 400 ") and problem_of(answer)["code"] == "TRAILER_REFUSED", answer[:300]


async def test_what_is_not_http_is_a_400_problem(served: Served) -> None:
    answer = await exchange(
        served.host, served.port, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", timeout=5
    )
    assert answer.startswith(b"HTTP/1.1 400 ") and problem_of(answer)["code"] == "BAD_REQUEST", answer[:300]
    assert refusals(served)["bad request"] >= 1
