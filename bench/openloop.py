"""Open-loop load at a fixed rate, for the p99 goals (wrk2's way of measuring).

A closed-loop generator (wrk) sends the next request only when the last answer came back,
so a server that stalls for a second also stops the clock of the requests it delayed: the
tail disappears ("coordinated omission"). Here every request has an intended start on a
fixed schedule (`rate` per second, spread over `connections` keep-alive connections, as
wrk2 -R does), and its latency runs from that intended start, however late it was sent.

No packaged tool does this here: Debian has wrk but not wrk2, and neither oha nor vegeta is
in the package registries this project installs from. This is a lean asyncio Protocol
(uvloop in the bench): at the ~70 % rates the bench asks, it spends a fraction of its core.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import cast
from urllib.parse import urlsplit

from bench.loadgen import REQUEST_TIMEOUT, LoadResult, Scenario, measured, tally, x_cache


class _Answers(asyncio.Protocol):
    """One keep-alive connection that hands back each complete answer's header block."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiting: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiting is None:
            return
        head = bytes(self.buffer[: end + 2])
        start = head.lower().find(b"\r\ncontent-length:")
        length = int(head[start + 17 : head.index(b"\r\n", start + 2)]) if start >= 0 else 0
        if len(self.buffer) >= end + 4 + length:  # answers are small: no chunked encoding here
            del self.buffer[: end + 4 + length]
            self.waiting.set_result(head)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(ConnectionError("connection closed"))

    async def exchange(self, raw: bytes) -> bytes:
        assert self.transport is not None
        self.waiting = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiting


async def loop_lag(until: float, samples: list[float], period: float = 0.01) -> None:
    """How late this event loop wakes up (ms): the generator's own delay, counted in every
    latency; when its p99 is not small beside the API's, the generator is the bottleneck."""
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        asked = loop.time() + period
        await asyncio.sleep(period)
        samples.append((loop.time() - asked) * 1000.0)


async def run_open_loop(
    url: str, scenario: Scenario, rate: float, duration: float, key_prefix: str, connections: int = 32
) -> tuple[LoadResult, list[float]]:
    """Send `scenario` at `rate` requests/s for `duration` s; latencies from intended starts.
    Also returns the generator's own event-loop lag samples (ms)."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    host = parts.netloc
    rendered = [None if r.unique_key else r.render(host) for r in scenario.requests]
    next_index = itertools.count()
    latencies: list[float] = []
    cache: dict[str, int] = {}
    statuses: dict[str, int] = {}
    host_name, port = parts.hostname or "127.0.0.1", parts.port or 80
    opened = [await loop.create_connection(_Answers, host_name, port) for _ in range(connections)]
    started = loop.time() + 0.05
    stop_at = started + duration

    async def one_connection(number: int, answers: _Answers) -> None:
        for k in itertools.count():
            intended = started + (number + k * connections) / rate  # request j starts at j / rate
            if intended >= stop_at:
                return
            if intended > loop.time():
                await asyncio.sleep(intended - loop.time())
            sent = next(next_index)
            index = sent % len(rendered)
            raw = rendered[index] or scenario.requests[index].render(host, f"{key_prefix}-{sent}")
            try:
                head = await asyncio.wait_for(answers.exchange(raw), REQUEST_TIMEOUT)
            except (TimeoutError, OSError):
                latencies.append((loop.time() - intended) * 1000.0)
                tally(statuses, "0")
                return  # a dead connection sends no more: its missing answers show as a lower rate
            latencies.append((loop.time() - intended) * 1000.0)
            tally(statuses, head[9:12].decode())
            tally(cache, x_cache(head))

    lag: list[float] = []
    try:
        await asyncio.gather(
            loop_lag(stop_at, lag), *(one_connection(n, answers) for n, (_, answers) in enumerate(opened))
        )
    finally:
        for transport, _ in opened:
            transport.close()
    errors = sum(n for status, n in statuses.items() if not status.startswith("2"))
    return measured(latencies, errors, duration, "open loop", cache, statuses), lag
