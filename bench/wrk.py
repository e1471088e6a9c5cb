"""Closed-loop load for bench/run.py: wrk for graded runs, a built-in asyncio client otherwise.

A scenario is a cycle of HTTP requests sent over keep-alive connections. Both generators
take the same scenario and return the same `LoadResult`, so the report does not care which
one ran; both tally every answer's status and `X-Cache` header, so that a row claiming
cache hits can prove it. A request marked `unique_key` gets a fresh `Idempotency-Key` on
every send, so a recharge is a real recharge and never an idempotent replay.

The built-in client speaks HTTP/1.1 over raw asyncio streams (no HTTP library: parsing
costs would be measured instead of the server). It cannot drive the API to its limit on one
core, so it serves the sequential latency table and the bench's own set-up requests only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict
from urllib.parse import urlsplit

# No run may go on forever, whatever the duration asked: the built-in client stops at this
# many requests per connection, wrk at its duration (enforced again by a subprocess timeout).
MAX_REQUESTS_PER_CONNECTION = 2_000_000
REQUEST_TIMEOUT = 10.0

Prepare = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with its query string, from the server's root
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    unique_key: bool = False  # send a fresh Idempotency-Key each time

    def render(self, host: str, key: str | None = None) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if key is not None:
            lines.append(f"Idempotency-Key: {key}")
        body = self.body or b""
        if self.body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass(frozen=True)
class Scenario:
    """Requests sent in this order, round and round, by every connection."""

    name: str
    requests: tuple[Request, ...]


@dataclass
class LoadResult:
    requests: int
    errors: int  # answers other than 2xx, plus connection errors and timeouts
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    generator: str
    cache: dict[str, int] = field(default_factory=dict)  # X-Cache value ("-" when absent) -> answers
    statuses: dict[str, int] = field(default_factory=dict)  # status -> answers
    silent_seconds: int = 0  # whole seconds inside the run in which no answer arrived

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


class Percentiles(TypedDict):
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float


def summarize(latencies_ms: list[float]) -> Percentiles:
    ordered = sorted(latencies_ms)
    return {
        "p50_ms": percentile(ordered, 0.50),
        "p90_ms": percentile(ordered, 0.90),
        "p99_ms": percentile(ordered, 0.99),
        "p999_ms": percentile(ordered, 0.999),
        "max_ms": ordered[-1] if ordered else float("nan"),
    }


def measured(
    latencies_ms: list[float], errors: int, seconds: float, generator: str, cache: Any, statuses: Any
) -> LoadResult:
    """The result of a run of this module's own clients, from the latencies they measured."""
    return LoadResult(
        requests=len(latencies_ms),
        errors=errors,
        seconds=seconds,
        generator=generator,
        cache=cache,
        statuses=statuses,
        **summarize(latencies_ms),
    )


def x_cache(head: bytes) -> str:
    """The X-Cache value of a response's header block, "-" when it has none."""
    lowered = head.lower()
    start = lowered.find(b"\r\nx-cache:")
    if start < 0:
        return "-"
    end = lowered.find(b"\r\n", start + 2)
    return head[start + 10 : end if end >= 0 else None].strip().decode()


def tally(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


# ---------------------------------------------------------------- the built-in client
class Connection:
    """One keep-alive HTTP/1.1 connection that sends a request and reads its whole answer."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.host_header = parts.netloc
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.reader = self.writer = None

    async def exchange(self, raw: bytes) -> tuple[int, bytes, bytes]:
        """Send one rendered request; return (status, header block, body)."""
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lowered = head.lower()
        start = lowered.find(b"\r\ncontent-length:")
        if start >= 0:
            end = lowered.index(b"\r\n", start + 2)
            body = await self.reader.readexactly(int(lowered[start + 17 : end]))
        elif b"\r\ntransfer-encoding: chunked" in lowered:
            body = await self._read_chunked()
        else:
            body = b""
        if b"\r\nconnection: close" in lowered:
            await self.close()
        return status, head, body

    async def _read_chunked(self) -> bytes:
        assert self.reader is not None
        chunks: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return b"".join(chunks)
            chunks.append(chunk[:-2])

    async def send(self, request: Request, key: str | None = None) -> tuple[int, bytes, bytes]:
        return await asyncio.wait_for(self.exchange(request.render(self.host_header, key)), REQUEST_TIMEOUT)


async def run_builtin(
    url: str, scenario: Scenario, connections: int, duration: float, warmup: float, key_prefix: str
) -> LoadResult:
    """`connections` keep-alive connections sending back to back for `warmup + duration`
    seconds; only the answers to requests sent after the warm-up are counted.

    The connections walk one shared cycle (as wrk's single thread does), so a scenario
    of distinct ids sends each id once per lap rather than once per connection."""
    host = urlsplit(url).netloc
    rendered = [None if r.unique_key else r.render(host) for r in scenario.requests]
    cycle = len(scenario.requests)
    next_index = itertools.count()
    latencies: list[float] = []
    errors = 0
    cache: dict[str, int] = {}
    statuses: dict[str, int] = {}
    started = time.perf_counter()
    measure_from = started + warmup
    stop_at = measure_from + duration

    async def one_connection() -> None:
        nonlocal errors
        connection = Connection(url)
        try:
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                sent = next(next_index)
                index = sent % cycle
                raw = rendered[index] or scenario.requests[index].render(host, f"{key_prefix}-{sent}")
                before = time.perf_counter()
                if before >= stop_at:
                    return
                status, head = 0, b""
                try:
                    status, head, _ = await asyncio.wait_for(connection.exchange(raw), REQUEST_TIMEOUT)
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                    await connection.close()
                if before >= measure_from:
                    latencies.append((time.perf_counter() - before) * 1000.0)
                    errors += not 200 <= status < 300
                    tally(statuses, str(status))
                    tally(cache, x_cache(head))
        finally:
            await connection.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    # Counted requests are those sent within the window, so the window is the time base.
    return measured(latencies, errors, duration, "builtin", cache, statuses)


# ---------------------------------------------------------------- wrk
def wrk_binary() -> str | None:
    return shutil.which("wrk")


def _lua_string(text: str | bytes) -> str:
    """A Lua string literal holding exactly these bytes."""
    data = text.encode() if isinstance(text, str) else text
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}" for b in data) + '"'


# wrk calls request() for every request; the static ones are formatted once, in init().
# response() tallies every answer's status, X-Cache value and second of arrival (each thread
# in its own Lua state); done() gathers the threads' tallies and prints the exact figures as
# JSON, so nothing is parsed from wrk's rounded text.
_WRK_SCRIPT = """
local requests = {%(requests)s}
local key_prefix = %(key_prefix)s
local static = {}
local index = 0
local sent = 0
local threads = {}
cache_seen, status_seen, second_seen = {}, {}, {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

function init(args)
  index = (thread_number or 0) %% #requests
  for i, r in ipairs(requests) do
    if not r.unique then static[i] = wrk.format(r.method, r.path, r.headers, r.body) end
  end
end

function request()
  index = index %% #requests + 1
  local ready = static[index]
  if ready then return ready end
  local r = requests[index]
  sent = sent + 1
  r.headers["Idempotency-Key"] = key_prefix .. "-" .. (thread_number or 0) .. "-" .. sent
  return wrk.format(r.method, r.path, r.headers, r.body)
end

local function count(t, key) t[key] = (t[key] or 0) + 1 end

function response(status, headers, body)
  count(cache_seen, headers["x-cache"] or headers["X-Cache"] or "-")
  count(status_seen, tostring(status))
  count(second_seen, os.time())
end

local function json_counts(t)
  local parts = {}
  for k, v in pairs(t) do table.insert(parts, string.format('"%%s": %%d', k, v)) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local cache, status, seconds = {}, {}, {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("cache_seen")) do cache[k] = (cache[k] or 0) + v end
    for k, v in pairs(t:get("status_seen")) do status[k] = (status[k] or 0) + v end
    for k, v in pairs(t:get("second_seen")) do seconds[k] = (seconds[k] or 0) + v end
  end
  local first, last = math.huge, -math.huge
  for s in pairs(seconds) do first = math.min(first, s); last = math.max(last, s) end
  local silent = 0
  for s = first + 1, last - 1 do if not seconds[s] then silent = silent + 1 end end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %%d, "duration_us": %%d, "errors": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, '
    .. '"p999_us": %%d, "max_us": %%d, "silent_seconds": %%d, "cache": %%s, "statuses": %%s}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, silent, json_counts(cache), json_counts(status)))
end
"""


def wrk_script(scenario: Scenario, key_prefix: str) -> str:
    entries = []
    for r in scenario.requests:
        headers = dict(r.headers)
        if r.body is not None:
            headers["Content-Type"] = "application/json"
        header_table = ", ".join(f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items())
        body = _lua_string(r.body) if r.body is not None else "nil"
        entries.append(
            f"{{method = {_lua_string(r.method)}, path = {_lua_string(r.path)}, "
            f"headers = {{{header_table}}}, body = {body}, unique = {str(r.unique_key).lower()}}}"
        )
    return _WRK_SCRIPT % {"requests": ",\n  ".join(entries), "key_prefix": _lua_string(key_prefix)}


async def _wrk_once(url: str, scenario: Scenario, connections: int, seconds: int, key_prefix: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-", delete=False) as script:
        script.write(wrk_script(scenario, key_prefix))
    try:
        process = await asyncio.create_subprocess_exec(
            wrk_binary() or "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            f"{REQUEST_TIMEOUT:.0f}s",
            "-s",
            script.name,
            url,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), seconds + 30)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(f"wrk did not finish a {seconds} s run") from None
    finally:
        os.unlink(script.name)
    for line in output.decode(errors="replace").splitlines():
        if line.startswith("WRK_RESULT "):
            return json.loads(line[len("WRK_RESULT ") :])
    raise RuntimeError(f"wrk printed no result: {output.decode(errors='replace')[-2000:]}")


async def run_wrk(
    url: str,
    scenario: Scenario,
    connections: int,
    duration: float,
    warmup: float,
    key_prefix: str,
    prepare: Prepare | None = None,
) -> LoadResult:
    """`prepare` (refreshing the keys a hit run reads, say), a warm-up run whose figures are
    thrown away, then the measured run (one wrk thread: the load generator gets one core of
    its own)."""
    if prepare is not None:
        await prepare()
    if warmup > 0:
        await _wrk_once(url, scenario, connections, max(1, round(warmup)), key_prefix + "w")
    figures = await _wrk_once(url, scenario, connections, max(1, round(duration)), key_prefix)
    return LoadResult(
        requests=figures["requests"],
        errors=figures["errors"],
        seconds=figures["duration_us"] / 1e6,
        p50_ms=figures["p50_us"] / 1000,
        p90_ms=figures["p90_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        p999_ms=figures["p999_us"] / 1000,
        max_ms=figures["max_us"] / 1000,
        generator="wrk",
        cache=figures["cache"],
        statuses=figures["statuses"],
        silent_seconds=figures["silent_seconds"],
    )


async def run_load(
    url: str,
    scenario: Scenario,
    connections: int,
    duration: float,
    warmup: float,
    key_prefix: str,
    generator: str = "wrk",
    prepare: Prepare | None = None,
) -> LoadResult:
    """Load `url` with `scenario` by wrk (or the built-in client when asked: a smoke test).
    `prepare` (making a scenario's keys fresh, say) runs before the load starts."""
    if generator == "wrk":
        return await run_wrk(url, scenario, connections, duration, warmup, key_prefix, prepare)
    if prepare is not None:
        await prepare()  # the built-in client's warm-up goes on along the cycle: once is enough
    return await run_builtin(url, scenario, connections, duration, warmup, key_prefix)


def wrk_version() -> str | None:
    binary = wrk_binary()
    if binary is None:
        return None
    done = subprocess.run([binary, "--version"], capture_output=True, text=True)
    return (done.stdout or done.stderr).split(" Copyright")[0].strip()
