"""The servers under test and the machine they share: processes, core pinning, progress.

bench/ reaches the service over HTTP only; here it starts it (`python server.py`, as
`make run` does: default settings, request log on) and the ceiling apps beside it.
"""

from __future__ import annotations

import asyncio
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

from bench.loadgen import Connection, Request
from travel.startup.processes import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
API = "/api/v1"
CEILING_KINDS = ("constant", "redis-get", "pg-select", "pg-update")


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
    def choose(cls, enabled: bool) -> Pinning:
        cores = frozenset(os.sched_getaffinity(0))
        if not enabled or len(cores) < 2:
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


class ServerProcess:
    """A server under test (the API or a ceiling app) as a child process with a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], port: int, log_dir: Path) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, **env, "PORT": str(port)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, path: str, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.log_tail()}")
            connection = Connection(self.url)
            try:
                status, _, _ = await connection.send(Request("GET", path))
                if status == 200:
                    return
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                pass
            finally:
                await connection.close()
            await asyncio.sleep(0.2)  # the port is not open yet: nothing to wait on but time
        raise RuntimeError(f"{self.name} not ready within {within:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_line_count(self) -> int:
        with self.log_path.open("rb") as log:
            return sum(1 for _ in log)

    def rss_mib(self) -> float | None:
        """Resident memory of the server and its workers, from /proc."""
        pids = [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        if children.exists():
            pids += [int(pid) for pid in children.read_text().split()]
        total_kb = 0
        for pid in pids:
            status = Path(f"/proc/{pid}/status")
            if status.exists():
                total_kb += next(
                    (int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmRSS:")), 0
                )
        return total_kb / 1024 if total_kb else None

    def stop(self) -> None:
        stop_process(self.process, timeout=15)


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
    return ServerProcess(name, [*pinning.server_prefix(), sys.executable, "server.py"], env, free_port(), log_dir)


def start_ceilings(database_url: str, redis_url: str, pinning: Pinning, log_dir: Path) -> dict[str, ServerProcess]:
    return {
        kind: ServerProcess(
            f"ceiling-{kind}",
            [*pinning.server_prefix(), sys.executable, str(ROOT / "bench" / "ceilings.py"), kind],
            {"DATABASE_URL": database_url, "REDIS_URL": redis_url},
            free_port(),
            log_dir,
        )
        for kind in CEILING_KINDS
    }


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
