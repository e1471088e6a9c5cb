"""Open-loop load at a fixed rate, for the p99 goals (wrk2's way of measuring).

A closed-loop generator (wrk) sends the next request only when the last answer came back,
so a server that stalls for a second also stops the clock of the requests it delayed: the
tail disappears ("coordinated omission"). Here every request has an intended start on a
fixed schedule (`rate` per second, spread over `connections` keep-alive connections, as
wrk2 -R does), and its latency runs from that intended start, however late it was sent.

No packaged tool does this here: Debian has wrk but not wrk2, and neither oha nor vegeta is
in the package registries this project installs from. This sends over bench/wire.py's
lean asyncio Protocol (uvloop in the bench): at the ~70 % rates the bench asks, it spends a
fraction of its core.
"""

from __future__ import annotations

import asyncio
import itertools
from urllib.parse import urlsplit

from bench.figures import LoadResult, summarize, tally
from bench.wire import REQUEST_TIMEOUT, Connection, Scenario, x_cache


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
    host = urlsplit(url).netloc
    rendered = [None if r.unique_key else r.render(host) for r in scenario.requests]
    next_index = itertools.count()
    latencies: list[float] = []
    cache: dict[str, int] = {}
    statuses: dict[str, int] = {}
    opened = [Connection(url) for _ in range(connections)]
    for connection in opened:
        await connection.open()
    started = loop.time() + 0.05
    stop_at = started + duration

    async def one_connection(number: int, connection: Connection) -> None:
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
                status, head, _ = await asyncio.wait_for(connection.exchange(raw), REQUEST_TIMEOUT)
            except (TimeoutError, OSError):
                latencies.append((loop.time() - intended) * 1000.0)
                tally(statuses, "0")
                return  # a dead connection sends no more: its missing answers show as a lower rate
            latencies.append((loop.time() - intended) * 1000.0)
            tally(statuses, str(status))
            tally(cache, x_cache(head))

    lag: list[float] = []
    try:
        await asyncio.gather(
            loop_lag(stop_at, lag), *(one_connection(n, connection) for n, connection in enumerate(opened))
        )
    finally:
        for connection in opened:
            connection.close()
    errors = sum(n for status, n in statuses.items() if not status.startswith("2"))
    result = LoadResult(
        requests=len(latencies),
        errors=errors,
        seconds=duration,
        generator="open loop",
        cache=cache,
        statuses=statuses,
        **summarize(latencies),
    )
    return result, lag
