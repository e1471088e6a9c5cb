"""The edge of the service (docs/design.md: the edge, issue 11 findings 1, 2 and 7), against `python server.py`
in a process of its own: a huge header must not stall other clients, a request that does not
arrive in time is closed, a worker holds a bounded number of connections, and no redirect
echoes the Host header. Loopback only; every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.servers import server_process
from tests.support.stack import fresh_database
from travel.edge import protocol
from travel.settings import Settings, SettingsError
from travel.startup.embedded import EmbeddedStack
from travel.startup.processes import ServerProcess

pytestmark = pytest.mark.slow  # its own server process, and bounds of a second or more waited out

READ_TIMEOUT = 1.0  # the bound, made small for these tests through READ_TIMEOUT
SWEEP = min(1.0, READ_TIMEOUT / 4)  # how late protocol.py may notice a deadline
SLACK = 2.0  # a shared, busy machine: scheduling delay on top of the bound
MiB = 1024 * 1024


@dataclass
class Served:
    process: ServerProcess
    host: str
    port: int


@contextlib.contextmanager
def serving(database_url: str, redis_url: str, log_path: Path, **env: str) -> Iterator[Served]:
    process = server_process(log_path, DATABASE_URL=database_url, REDIS_URL=redis_url, **env)
    try:
        process.wait_healthy()
        yield Served(process, "127.0.0.1", process.port)
    finally:
        process.stop()


@pytest.fixture(scope="module")
async def served(
    stack: EmbeddedStack, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Served]:
    """One server for the module, with a one-second READ_TIMEOUT."""
    database_url = await fresh_database(stack, "edge")
    log_path = tmp_path_factory.mktemp("edge") / "server.log"
    # 2,000 connections from one address: more than its default share of connection slots.
    env = {"READ_TIMEOUT": str(READ_TIMEOUT), "MAX_CONNECTIONS_PER_ADDRESS": "4096"}
    with serving(database_url, stack.redis.url, log_path, **env) as running:
        yield running


@pytest.fixture(scope="module")
async def http(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{served.host}:{served.port}/api/v1", timeout=10) as client:
        assert (await client.get("/health")).status_code == 200  # the connection is open and warm
        yield client


async def timed_health(http: httpx.AsyncClient) -> float:
    started = time.monotonic()
    response = await http.get("/health")
    assert response.status_code == 200, response.text
    return time.monotonic() - started


async def read_all(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """What the server sends until it closes (a reset counts as a close); fails if it does not."""
    try:
        return await asyncio.wait_for(reader.read(-1), timeout)
    except ConnectionResetError:
        return b""


def head_of(size: int) -> bytes:
    """A GET /health (then close) whose request line + headers are exactly `size` bytes."""
    start = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: "
    end = b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


# ---------------------------------------------------------------- finding 1: a huge header
async def test_a_48_mib_header_is_refused_without_stalling_other_clients(
    served: Served, http: httpx.AsyncClient
) -> None:
    reader, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent = 0
    refused = False

    async def send_header() -> None:
        nonlocal sent, refused
        chunk = b"a" * MiB
        try:
            for _ in range(48):
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
        except (ConnectionResetError, BrokenPipeError):
            refused = True

    sending = asyncio.create_task(send_header())
    latencies = [await timed_health(http)]
    while not sending.done() and len(latencies) < 1000:  # the whole time the header is sent
        latencies.append(await timed_health(http))
    await sending
    answer = await read_all(reader, timeout=5)
    writer.close()
    # Refused at 16 KiB: the connection was closed long before the 48 MiB were sent (a server that
    # read them all and then answered 431 would fail here), and nothing but a 431 came back.
    assert refused and sent < 16 * MiB, f"{sent / MiB:.0f} MiB of the header were taken in"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert max(latencies) < 0.1, latencies


@pytest.mark.parametrize("piece", [None, 1000], ids=["one-write", "in-1000-byte-pieces"])
async def test_a_head_of_16_kib_passes_and_one_byte_more_is_431(served: Served, piece: int | None) -> None:
    for size, status in ((protocol.HEAD_LIMIT, 200), (protocol.HEAD_LIMIT + 1, 431)):
        reader, writer = await asyncio.open_connection(served.host, served.port)
        request = head_of(size)
        assert len(request) == size
        for start in range(0, size, piece or size):
            writer.write(request[start : start + (piece or size)])
            await writer.drain()
        answer = await read_all(reader, timeout=5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 %d " % status), (size, answer[:300])
        if status == 431:
            head, body = answer.split(b"\r\n\r\n", 1)
            assert b"content-type: application/problem+json" in head.lower()
            assert json.loads(body)["code"] == "HEADERS_TOO_LARGE"


# ---------------------------------------------------------------- finding 2: requests that never finish
async def test_2000_half_sent_requests_are_closed_within_the_bound_while_health_answers(
    served: Served, http: httpx.AsyncClient
) -> None:
    all_open = asyncio.Event()
    opened = 0

    async def half_sent() -> float:
        nonlocal opened
        reader, writer = await asyncio.open_connection(served.host, served.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        started = time.monotonic()
        opened += 1
        if opened == 2000:
            all_open.set()
        try:
            assert await read_all(reader, timeout=READ_TIMEOUT + SWEEP + SLACK + 5) == b""
            return time.monotonic() - started
        finally:
            writer.close()

    connections = [asyncio.create_task(half_sent()) for _ in range(2000)]
    await asyncio.wait_for(all_open.wait(), timeout=30)
    assert await timed_health(http) < 1.0  # served while 2,000 connections hang
    held_for = await asyncio.gather(*connections)
    assert max(held_for) <= READ_TIMEOUT + SWEEP + SLACK, max(held_for)
    assert await timed_health(http) < 1.0


async def test_a_connection_that_sends_nothing_is_closed_within_the_bound(served: Served) -> None:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(served.host, served.port)
    assert await read_all(reader, timeout=READ_TIMEOUT + SWEEP + SLACK + 5) == b""
    writer.close()
    assert READ_TIMEOUT <= time.monotonic() - started <= READ_TIMEOUT + SWEEP + SLACK


async def test_a_header_dribbled_byte_by_byte_is_closed_within_the_bound(served: Served) -> None:
    """The bound runs from the request's first byte: bytes that keep arriving do not extend it."""
    reader, writer = await asyncio.open_connection(served.host, served.port)
    started = time.monotonic()
    closed_after = None
    for byte in b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.wait_for(reader.read(1), timeout=0.1)  # b"" once closed; else the next byte
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            pass
        closed_after = time.monotonic() - started
        break
    writer.close()
    assert closed_after is not None, "a dribbled header was never closed"
    assert READ_TIMEOUT <= closed_after <= READ_TIMEOUT + SWEEP + SLACK, closed_after


async def test_a_body_that_stalls_midway_is_closed_within_the_bound(served: Served) -> None:
    reader, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(
        b"POST /api/v1/recharges HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer recharge-point-1-token\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"card_id": 1, '
    )
    await writer.drain()
    started = time.monotonic()
    assert await read_all(reader, timeout=READ_TIMEOUT + SWEEP + SLACK + 5) == b""
    writer.close()
    assert time.monotonic() - started <= READ_TIMEOUT + SWEEP + SLACK


async def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(served: Served) -> None:
    reader, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    assert head.startswith(b"HTTP/1.1 200 ")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    await asyncio.wait_for(reader.readexactly(length), timeout=5)
    answered = time.monotonic()
    assert await read_all(reader, timeout=protocol.KEEP_ALIVE_SECONDS + SLACK + 5) == b""
    writer.close()
    assert protocol.KEEP_ALIVE_SECONDS - 0.5 <= time.monotonic() - answered <= protocol.KEEP_ALIVE_SECONDS + SLACK


# ---------------------------------------------------------------- the connection cap
# At the cap the oldest idle connection makes room, else a 503 problem: tests/test_edge_fairness.py.


# ---------------------------------------------------------------- finding 7: no open redirect
async def test_a_trailing_slash_is_404_and_never_a_redirect_to_the_host_header(http: httpx.AsyncClient) -> None:
    for path in ("/routes/", "/health/", "/cards/1/balance/"):
        response = await http.get(path, headers={"Host": "evil.example"})
        assert response.status_code == 404, (path, response.status_code, response.headers)
        assert "location" not in response.headers
        assert response.headers["content-type"].split(";")[0] == "application/problem+json"
        assert response.json()["code"] == "NOT_FOUND"


# ---------------------------------------------------------------- uvicorn_options
def test_uvicorn_options_bound_the_protocol_and_choose_the_listener() -> None:
    tcp = protocol.uvicorn_options(Settings())
    assert (tcp["host"], tcp["port"], tcp["timeout_keep_alive"]) == ("127.0.0.1", 8000, protocol.KEEP_ALIVE_SECONDS)
    assert tcp["http"].func is protocol.EdgeProtocol
    assert tcp["http"].keywords == {"read_timeout": 10.0, "per_address": 0}  # 0: the protocol derives it from the cap
    assert "uds" not in tcp and tcp["proxy_headers"] is False
    uds = protocol.uvicorn_options(Settings(unix_socket="/run/api.sock"))
    assert uds["uds"] == "/run/api.sock" and "host" not in uds
    for wrong in (0.0, -1.0, 15.5):
        with pytest.raises(SettingsError, match="READ_TIMEOUT"):
            Settings(read_timeout=wrong)


def test_the_connection_cap_stays_below_the_open_file_limit() -> None:
    assert protocol.connection_cap(0, 1_048_576) == protocol.DEFAULT_MAX_CONNECTIONS
    assert protocol.connection_cap(0, 1024) == 1024 - protocol.FD_RESERVE
    assert protocol.connection_cap(500, 1024) == 500
    assert protocol.connection_cap(5000, 1024) == 1024 - protocol.FD_RESERVE


# ---------------------------------------------------------------- pipelining, trailers, headers twice
def pipelined(count: int, path: str = "/api/v1/stations") -> bytes:
    return b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode() for _ in range(count))


async def test_a_short_pipeline_is_answered_whole(served: Served) -> None:
    reader, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(pipelined(protocol.MAX_PIPELINED - 1, "/api/v1/health") + head_of(200))
    answers = await read_all(reader, timeout=10)
    writer.close()
    assert answers.count(b"HTTP/1.1 200 ") == protocol.MAX_PIPELINED


async def test_a_pipeline_read_ahead_of_its_answers_is_cut_off(served: Served, http: httpx.AsyncClient) -> None:
    """Requests read but not answered are held in memory: past MAX_PIPELINED the connection is
    closed, and nothing of the rest is parsed into requests."""
    reader, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(pipelined(5000))  # ~160 KiB: one read of the server's
    await writer.drain()
    answers = await read_all(reader, timeout=10)
    writer.close()
    assert answers.count(b"HTTP/1.1 200 ") <= protocol.MAX_PIPELINED + 1
    assert await timed_health(http) < 0.5
    assert "more than 16 pipelined requests waiting" in served.process.printed()


async def test_a_client_gone_under_a_pipeline_is_499_never_an_error(served: Served, http: httpx.AsyncClient) -> None:
    for _ in range(3):
        reader, writer = await asyncio.open_connection(served.host, served.port)
        writer.write(pipelined(protocol.MAX_PIPELINED))
        await writer.drain()
        await reader.read(100)
        writer.transport.abort()  # a reset, with answers still to write
    assert await timed_health(http) < 0.5
    printed = served.process.printed()
    assert "unexpected error" not in printed and "Traceback" not in printed
    assert 'status="500"' not in (await http.get(f"http://{served.host}:{served.port}/metrics")).text


async def test_a_trailer_never_joins_the_headers(served: Served) -> None:
    """httptools hands a chunked body's trailer fields to the header callback, after the app
    has its headers: an Idempotency-Key there would count without passing the head limit."""
    reader, writer = await asyncio.open_connection(served.host, served.port)
    body = b'{"card_id": 1, "amount": 100}'
    writer.write(
        b"POST /api/v1/recharges HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token-for-tests\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\nIdempotency-Key: from-a-trailer\r\n\r\n"
        % (len(body), body)
    )
    await writer.drain()
    answer = await read_all(reader, timeout=10)
    writer.close()
    assert b"HTTP/1.1 201" not in answer
    assert "a trailer after a chunked body" in served.process.printed()


async def test_two_authorization_headers_are_refused(served: Served) -> None:
    reader, writer = await asyncio.open_connection(served.host, served.port)
    writer.write(
        b"GET /api/v1/users/latest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer admin-token-for-tests\r\nAuthorization: Bearer nope\r\n\r\n"
    )
    answer = await read_all(reader, timeout=10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401 ") and b'"code":"UNAUTHORIZED"' in answer
