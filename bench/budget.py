"""The API's CPU per request, itemised (`make budget`, `python -m bench.budget`).

For each path (hit, uncached, recharge, boarding) it loads the API as deployed with wrk (one
core for wrk, the API pinned to the other, as the bench pins), reads the API's CPU seconds
from /proc around the run (bench/cpu.py) and, during the same run, samples the API's stack
with py-spy. Each sample is charged to the innermost frame that belongs to one part of the
request's way (the PARTS below, matched by file), so a part's share of the samples times the
measured CPU per request is what that part costs a request. Samples outside every part
(uvloop's own loop, asyncio's tasks and futures) are "event loop and the rest".

A profile is a sample, not an accounting: shares move by a point or two between runs. The
totals are measured; the parts are estimates of where they go.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import secrets
import sys
import tempfile
from pathlib import Path

import uvloop

from bench.cpu import CpuProbe, per_request_us
from bench.fixture import Target, prepare_fixture
from bench.scenarios import api_scenario
from bench.stack import Pinning, start_api
from bench.wrk import run_wrk
from travel.startup.embedded import EmbeddedStack

PATHS = ("hit", "uncached", "recharge", "boarding")
PY_SPY = str(Path(sys.executable).parent / "py-spy")  # installed beside this Python (requirements-bench.txt)
# (part, substrings of a frame's file or function): the first part whose pattern the innermost
# matching frame carries takes the sample. Ours before the libraries they call.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("the answer's write (send syscall)", ("onewrite.py",)),
    ("edge guard", ("travel/edge/protocol.py",)),
    ("request log", ("observability/logs.py",)),
    (
        "metrics and /stats",
        ("observability/observer.py", "observability/stats.py", "observability/metrics.py", "prometheus_client"),
    ),
    ("front layer (errors, X-Request-ID)", ("endpoints/front.py",)),
    ("auth (token cache)", ("travel/auth.py",)),
    ("body decode and validation", ("endpoints/parsing.py", "msgspec")),
    ("batcher (group commit)", ("travel/groupcommit.py",)),
    ("Redis (cache.py + redis-py)", ("travel/cache.py", "/redis/")),
    ("PostgreSQL client (asyncpg)", ("travel/database.py", "/asyncpg/")),
    ("handler, declaration, encoding", ("travel/endpoints/", "responses.py")),
    ("routing (Starlette + ShapeRouter)", ("starlette/", "endpoints/routing.py")),
    ("HTTP parsing and uvicorn's cycle", ("uvicorn/", "httptools")),
)
OTHER = "event loop and the rest"


def part_of(stack: list[str]) -> str:
    """The part a sample (frames outermost first) is charged to."""
    for frame in reversed(stack):
        for part, patterns in PARTS:
            if any(pattern in frame for pattern in patterns):
                return part
    return OTHER


def shares(raw: Path) -> dict[str, float]:
    """Each part's share of the samples of a py-spy raw (collapsed) profile."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        counts[part_of(frames.split(";"))] += int(count)
    total = sum(counts.values()) or 1
    return {part: counts[part] / total for part in counts}


Figures = tuple[float, float, dict[str, float]]  # req/s, CPU µs per request, each part's share


async def measure(target: Target, path: str, pid: int, seconds: int, work: Path) -> Figures:
    """One path's figures: wrk's load and py-spy's samples over the same seconds."""
    scenario = api_scenario(target, path)
    raw = work / f"{path}.raw"
    record = [PY_SPY, "record", "--pid", str(pid), "--rate", "500", "--format", "raw", "--output", str(raw)]
    profiler = await asyncio.create_subprocess_exec(
        *record,
        "--duration",
        str(seconds + 1),  # wrk's measured run starts after its warm-up: cover it whole
        "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    result = await run_wrk(target.url, scenario, 32, seconds, 0, f"budget-{path}-", cpu=CpuProbe((("server", pid),)))
    await profiler.wait()
    cpu = per_request_us(result.cpu_s, result.requests)["server"]
    return result.requests / result.seconds, cpu, shares(raw)


def table(figures: dict[str, Figures]) -> str:
    """Markdown: µs per request by part (rows) and path (columns)."""
    parts = [part for part, _ in PARTS] + [OTHER]
    lines = [
        "| part | " + " | ".join(figures) + " |",
        "| --- |" + " ---: |" * len(figures),
        "| **CPU per request, measured** | " + " | ".join(f"**{cpu:.0f} µs**" for _, cpu, _ in figures.values()) + " |",
        "| requests/s | " + " | ".join(f"{rate:,.0f}" for rate, _, _ in figures.values()) + " |",
    ]
    for part in parts:
        cells = [f"{cpu * share.get(part, 0.0):.1f}" for _, cpu, share in figures.values()]
        if any(cell != "0.0" for cell in cells):
            lines.append(f"| {part} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def run(seconds: int, paths: list[str]) -> str:
    pinning = Pinning.choose(True)
    with tempfile.TemporaryDirectory(prefix="budget-") as directory, contextlib.ExitStack() as cleanup:
        work = Path(directory)
        stack = EmbeddedStack(work / "stack")
        database_url, redis_url = stack.start()
        cleanup.callback(stack.stop)
        token = secrets.token_urlsafe(24)
        api = start_api(database_url, redis_url, token, 1, pinning, work, {"DEMO_SCALE": "1"})
        cleanup.callback(api.stop)
        await asyncio.to_thread(api.wait_healthy, 120)
        target = Target("A", api.base_url, token)
        target.fixture = await prepare_fixture(target, secrets.token_hex(4))
        figures = {path: await measure(target, path, api.process.pid, seconds, work) for path in paths}
    return table(figures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.budget", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="each path's measured run")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {','.join(PATHS)}")
    args = parser.parse_args(argv)
    if not Path(PY_SPY).exists():
        raise SystemExit(f"bench.budget needs {PY_SPY}: pip install -r requirements-bench.txt")
    print(uvloop.run(run(args.seconds, args.paths.split(","))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
