"""The servers under test and the machine they share: processes, core pinning, progress.

bench/ reaches the service over HTTP only; here it starts it (`python server.py`, as
`make run` does: default settings, request log on) and the ceiling apps beside it, each a
travel.startup.processes.ServerProcess with its output in the run's log directory.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.ceilings import KINDS as CEILING_KINDS
from bench.cpu import CpuProbe
from travel import PROJECT_ROOT
from travel.startup.embedded import EmbeddedStack
from travel.startup.processes import ServerProcess, free_port

CEILING_HEALTH = "/ceiling/1"  # a ceiling app is ready when it serves
GO_BUILD = PROJECT_ROOT / "go" / "build.sh"
GO_BINARY = PROJECT_ROOT / "go" / "bin" / "travel-go"


def machine_facts() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    memory_kb = next(
        (
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kb / 2**20, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


@dataclass(frozen=True)
class Pinning:
    """Which cores the servers under test and the load generator run on.

    The load generator gets a core of its own so that it does not steal from the API;
    PostgreSQL and Redis keep every core, as they would on their own hosts."""

    server: frozenset[int]
    load: frozenset[int]

    @classmethod
    def choose(cls, enabled: bool, workers: int = 1) -> Pinning:
        """Pinned unless told not to, or unless the servers' `workers` processes (threads) would
        have fewer cores than that beside the load generator's: then they get the whole box."""
        cores = frozenset(os.sched_getaffinity(0))
        if not enabled or len(cores) < 2 or workers > len(cores) - 1:
            return cls(cores, cores)
        load = max(cores)
        return cls(cores - {load}, frozenset({load}))

    @property
    def pinned(self) -> bool:
        return self.server != self.load

    def describe(self) -> str:
        if not self.pinned:
            return "not pinned: load generator and servers share every core"
        return f"API and ceiling apps on cores {sorted(self.server)}, load generator on {sorted(self.load)}"

    def server_prefix(self) -> list[str]:
        return ["taskset", "-c", ",".join(map(str, sorted(self.server)))] if self.pinned else []


@contextlib.contextmanager
def every_core() -> Iterator[None]:
    """Start PostgreSQL/Redis unpinned even after the bench has pinned itself (children inherit)."""
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    try:
        yield
    finally:
        os.sched_setaffinity(0, mine)


def log_line_count(server: ServerProcess) -> int:
    with server.log_path.open("rb") as log:
        return sum(1 for _ in log)


def rss_mib(server: ServerProcess) -> float | None:
    """Resident memory of the server and its workers, from /proc."""
    pid = server.process.pid
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(child) for child in children.read_text().split()]
    total_kb = 0
    for each in pids:
        status = Path(f"/proc/{each}/status")
        if status.exists():
            total_kb += next(
                (int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmRSS:")), 0
            )
    return total_kb / 1024 if total_kb else None


class Progress:
    """One line on stderr: what runs now, how far, how long is left."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.started = time.monotonic()
        self.live = sys.stderr.isatty()

    def step(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        line = f"[{self.done + 1}/{self.total}] {text} · {elapsed:.0f} s elapsed"
        if self.done:
            line += f", ~{left:.0f} s left"
        self.done += 1
        sys.stderr.write(f"\r\x1b[K{line}" if self.live else line + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.live:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def start_api(
    database_url: str,
    redis_url: str,
    token: str,
    workers: int,
    pinning: Pinning,
    log_dir: Path,
    extra_env: dict[str, str],
    name: str = "api",
) -> ServerProcess:
    """The API as deployed: its own defaults (request log on), the bench's admin token."""
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "ADMIN_TOKEN": token,
        "WORKERS": str(workers),
        **extra_env,
    }
    return ServerProcess(
        env, command=[*pinning.server_prefix(), sys.executable, "server.py"], log_path=log_dir / f"{name}.log"
    )


def build_go() -> str | None:
    """go/build.sh (it rebuilds only what changed); None when it built, else why not."""
    if not GO_BUILD.exists():
        return f"{GO_BUILD.relative_to(PROJECT_ROOT)} is missing"
    done = subprocess.run(["sh", str(GO_BUILD)], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        return f"go/build.sh failed: {(done.stderr or done.stdout).strip()[-500:]}"
    return None


def go_version() -> str:
    done = subprocess.run(["go", "version", str(GO_BINARY)], capture_output=True, text=True)
    return done.stdout.strip().rpartition(": ")[2] or "go"


def start_go(database_url: str, redis_url: str, workers: int, pinning: Pinning, log_dir: Path) -> ServerProcess:
    """The Go version on the same servers, GOMAXPROCS = the API's WORKERS, pinned as the API is."""
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "HOST": "127.0.0.1",
        "GOMAXPROCS": str(workers),
    }
    return ServerProcess(env, command=[*pinning.server_prefix(), str(GO_BINARY)], log_path=log_dir / "go.log")


def stack_probe(stack: EmbeddedStack | None) -> CpuProbe:
    """PostgreSQL's and Redis's processes, when the bench started them (else nothing to read)."""
    if stack is None:
        return CpuProbe(())
    roots: list[tuple[str, int]] = []
    if (postmaster := stack.postgres.running_pid()) is not None:
        roots.append(("postgres", postmaster))
    if stack.redis.process is not None:
        roots.append(("redis", stack.redis.process.pid))
    return CpuProbe(tuple(roots))


def start_ceilings(database_url: str, redis_url: str, pinning: Pinning, log_dir: Path) -> dict[str, ServerProcess]:
    ceilings = {}
    for kind in CEILING_KINDS:
        port = free_port()
        ceilings[kind] = ServerProcess(
            {"DATABASE_URL": database_url, "REDIS_URL": redis_url},
            command=[*pinning.server_prefix(), sys.executable, "-m", "bench.ceilings", kind],
            port=port,
            log_path=log_dir / f"ceiling-{kind}.log",
            health_url=f"http://127.0.0.1:{port}{CEILING_HEALTH}",
        )
    return ceilings


async def database_facts(database_url: str) -> dict[str, Any]:
    """The PostgreSQL server's version and durability settings (no table of the service is read)."""
    conn = await asyncpg.connect(database_url)
    try:
        # Writes wait for their commit's flush when these are on, as they would in production.
        return {
            "postgres": await conn.fetchval("SHOW server_version"),
            "fsync": await conn.fetchval("SHOW fsync"),
            "synchronous_commit": await conn.fetchval("SHOW synchronous_commit"),
        }
    finally:
        await conn.close()
