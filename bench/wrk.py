"""Closed-loop load for bench/run.py: wrk (`-t1`, N keep-alive connections), driven by a Lua script.

wrk sends the next request on a connection when the last answer came back; the script walks
the scenario's cycle, gives each `unique_key` request a fresh Idempotency-Key, and tallies
every answer's status, X-Cache value and second of arrival, so that a row claiming cache hits
can prove it and a stalled second shows. wrk is required (`make bench` installs it:
bench/system-packages).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

from bench.cpu import CpuProbe
from bench.figures import LoadResult
from bench.wire import REQUEST_TIMEOUT, Scenario

Prepare = Callable[[], Awaitable[None]]


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
            "wrk",
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
            figures: dict[str, Any] = json.loads(line[len("WRK_RESULT ") :])
            return figures
    raise RuntimeError(f"wrk printed no result: {output.decode(errors='replace')[-2000:]}")


async def run_wrk(
    url: str,
    scenario: Scenario,
    connections: int,
    duration: float,
    warmup: float,
    key_prefix: str,
    prepare: Prepare | None = None,
    cpu: CpuProbe | None = None,
) -> LoadResult:
    """`prepare` (refreshing the keys a hit run reads, say), a warm-up run whose figures are
    thrown away, then the measured run (one wrk thread: the load generator gets one core of
    its own), with the CPU that `cpu`'s processes spent during it."""
    if prepare is not None:
        await prepare()
    if warmup > 0:
        await _wrk_once(url, scenario, connections, max(1, round(warmup)), key_prefix + "w")
    spent = cpu.around() if cpu is not None else None
    figures = await _wrk_once(url, scenario, connections, max(1, round(duration)), key_prefix)
    cpu_s = spent() if spent is not None else {}
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
        cpu_s=cpu_s,
    )


def wrk_version() -> str | None:
    binary = shutil.which("wrk")
    if binary is None:
        return None
    done = subprocess.run([binary, "--version"], capture_output=True, text=True)
    return (done.stdout or done.stderr).split(" Copyright")[0].strip()
