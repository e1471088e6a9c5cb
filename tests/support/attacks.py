"""Attacks on the edge (issue 20), as an attacker on loopback would make them: shared by
tests/test_edge_fairness.py and by hand (`python -m tests.support.attacks slow-readers PORT`).

Each takes the service's host and port, holds its sockets for a while, probes `/health` from
a connection of its own meanwhile, and reports what it saw: the slowest probe and the kernel's
TCP memory at its peak over what it was before (/proc/net/sockstat counts pages)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

PAGE = os.sysconf("SC_PAGESIZE")
MiB = 1024 * 1024


def tcp_memory() -> int:
    """Bytes of memory the kernel's TCP sockets hold (every socket of the machine)."""
    with open("/proc/net/sockstat") as sockstat:
        for line in sockstat:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1]) * PAGE
    raise RuntimeError("no TCP line in /proc/net/sockstat")


@dataclass
class Seen:
    """What probing saw while an attack held its sockets."""

    probes: list[float] = field(default_factory=list)  # seconds per /health answered 200
    failures: list[str] = field(default_factory=list)  # probes not answered 200
    tcp_before: int = 0
    tcp_peak: int = 0

    @property
    def slowest(self) -> float:
        return max(self.probes, default=float("inf"))

    @property
    def tcp_growth(self) -> int:
        return self.tcp_peak - self.tcp_before

    def __str__(self) -> str:
        return (
            f"{len(self.probes)} probes, slowest {self.slowest * 1000:.0f} ms, {len(self.failures)} failed"
            f" {self.failures[:3]}; TCP memory +{self.tcp_growth / MiB:.0f} MiB"
        )


async def probe_health(host: str, port: int, timeout: float = 5.0, source: str | None = None) -> float:
    """One `GET /api/v1/health` on a fresh connection: seconds to the whole answer; raises
    if it is not a 200 (or does not come within `timeout`)."""
    started = time.monotonic()

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0) if source else None)
        try:
            writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return await reader.read(-1)
        finally:
            writer.close()

    answer = await asyncio.wait_for(exchange(), timeout)
    if not answer.startswith(b"HTTP/1.1 200 "):
        raise AssertionError(f"/health answered {answer[:120]!r}")
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def probing(host: str, port: int, every: float = 0.05, source: str | None = None) -> AsyncIterator[Seen]:
    """Probe /health and sample TCP memory until the block ends, from a process of its own: an
    attack's own event loop, busy with thousands of sockets, would delay the probes."""
    command = [sys.executable, "-m", "tests.support.attacks", "probe", host, str(port), str(every), source or ""]
    prober = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    assert prober.stdin is not None and prober.stdout is not None
    seen = Seen()
    try:
        assert await asyncio.wait_for(prober.stdout.readline(), 10) == b"probing\n"
        yield seen
    finally:
        prober.stdin.close()  # the prober's signal to stop and report
        report = json.loads(await asyncio.wait_for(prober.stdout.read(), 30))
        await prober.wait()
        seen.probes, seen.failures = report["probes"], report["failures"]
        seen.tcp_before, seen.tcp_peak = report["tcp_before"], report["tcp_peak"]


def _probe_until_stdin_closes(host: str, port: int, every: float, source: str | None) -> None:
    seen = Seen(tcp_before=tcp_memory())
    seen.tcp_peak = seen.tcp_before

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_reader(sys.stdin.fileno(), stop.set)  # readable at EOF
        print("probing", flush=True)
        while not stop.is_set():
            try:
                seen.probes.append(await probe_health(host, port, source=source))
            except (OSError, AssertionError, TimeoutError) as error:
                seen.failures.append(f"{type(error).__name__}: {error}")
            seen.tcp_peak = max(seen.tcp_peak, tcp_memory())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    asyncio.run(probe())
    seen.tcp_peak = max(seen.tcp_peak, tcp_memory())
    print(json.dumps(dataclasses.asdict(seen)), flush=True)


def _slow_reader(host: str, port: int, request: bytes, receive_buffer: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect: the window
    sock.connect((host, port))
    sock.sendall(request)
    sock.setblocking(False)
    return sock


async def slow_readers(
    host: str,
    port: int,
    sockets: int = 1000,
    depth: int = 16,
    path: str = "/api/v1/stations",
    hold: float = 8.0,
    receive_buffer: int = 1024,
    other: str = "127.0.0.2",
) -> Seen:
    """`sockets` connections with a small receive buffer, each sending `depth` pipelined GETs of
    `path` and never reading; held `hold` seconds (past the keep-alive timeout), /health probed
    from the address `other` (the attacker's own is capped in connections)."""
    request = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode() * depth
    held: list[socket.socket] = []
    async with probing(host, port, source=other) as seen:
        loop = asyncio.get_running_loop()
        try:
            for _ in range(sockets):
                held.append(await loop.run_in_executor(None, _slow_reader, host, port, request, receive_buffer))
            await asyncio.sleep(hold)
        finally:
            for sock in held:
                sock.close()
    return seen


async def connection_hog(
    host: str, port: int, connections: int = 4100, hold: float = 5.0, other: str = "127.0.0.2", warm_up: float = 3.0
) -> Seen:
    """One address (`host`'s) opening `connections` idle connections and re-opening those the
    service closes, while another address (`other`) probes /health."""
    held: set[asyncio.StreamWriter] = set()
    stop = asyncio.Event()

    async def hold_one() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            held.add(writer)
            with contextlib.suppress(OSError):
                await reader.read(-1)  # until the service closes it
            held.discard(writer)
            writer.close()

    hogs = [asyncio.create_task(hold_one()) for _ in range(connections)]
    try:
        await asyncio.sleep(warm_up)  # every hog has connected, and those refused have come back
        async with probing(host, port, every=0.2, source=other) as seen:
            await asyncio.sleep(hold)
    finally:
        stop.set()
        for writer in list(held):
            writer.transport.abort()
        for hog in hogs:
            hog.cancel()
        await asyncio.gather(*hogs, return_exceptions=True)
    return seen


if __name__ == "__main__":
    if sys.argv[1] == "probe":
        _probe_until_stdin_closes(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5] or None)
        sys.exit()
    attack, target_port = sys.argv[1], int(sys.argv[2])
    options: dict[str, object] = {}
    for name, value in (argument.split("=", 1) for argument in sys.argv[3:]):
        options[name] = value if not value[0].isdigit() else float(value) if "." in value else int(value)
    if attack == "slow-readers":
        print(asyncio.run(slow_readers("127.0.0.1", target_port, **options)))  # type: ignore[arg-type]
    elif attack == "hog":
        print(asyncio.run(connection_hog("127.0.0.1", target_port, **options)))  # type: ignore[arg-type]
