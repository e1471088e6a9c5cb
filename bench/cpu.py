"""CPU time per request: what each throughput row cost the processes that served it.

Before and after a measured run the bench reads utime + stime from /proc/<pid>/stat for the
server under test and every process below it (uvicorn's workers when WORKERS > 1), and the
same for PostgreSQL (the postmaster and its backends) and Redis when the bench started them.
The root's cutime + cstime count too, so that a child which exited during the run (a backend
closing) is not lost. Only the run that is measured is running then, so the difference
divided by the answers counted is that row's CPU per request. Resolution: one clock tick
(10 ms here), about 1 % of a second-long run at one busy core.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PARTS = ("server", "postgres", "redis")  # the order in which the report shows them


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # exited meanwhile
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on; comm may hold spaces


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from each process's parent in /proc (a task's
    `children` file may skip some while others fork or exit)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parent = int(text[text.rindex(")") + 2 :].split(maxsplit=2)[1])
        children.setdefault(parent, []).append(int(stat.parent.name))
    found: list[int] = []
    pending = list(children.get(pid, ()))
    while pending:
        child = pending.pop()
        found.append(child)
        pending += children.get(child, ())
    return found


def tree_seconds(pid: int, attempts: int = 5) -> float:
    """CPU seconds of `pid` (with its reaped children) and of its live descendants. A child
    reaped between the reads would count twice or not at all: then read again."""
    ticks = 0
    for _ in range(attempts):
        before = _stat_fields(pid)
        live = sum(int(f[11]) + int(f[12]) for child in descendants(pid) if (f := _stat_fields(child)) is not None)
        after = _stat_fields(pid)
        if before is None or after is None:
            return 0.0
        ticks = sum(int(after[i]) for i in (11, 12, 13, 14)) + live  # utime, stime, cutime, cstime
        if after[13:15] == before[13:15]:  # nothing reaped meanwhile
            break
    return ticks / TICKS


@dataclass(frozen=True)
class CpuProbe:
    """The processes whose CPU a row is charged with: part name -> root pid."""

    roots: tuple[tuple[str, int], ...]

    def read(self) -> dict[str, float]:
        return {part: tree_seconds(pid) for part, pid in self.roots}

    def around(self) -> Callable[[], dict[str, float]]:
        """Read now; the returned function gives the CPU seconds spent since."""
        before = self.read()

        def spent() -> dict[str, float]:
            after = self.read()
            return {part: after[part] - before[part] for part in after}

        return spent

    def with_server(self, pid: int | None) -> CpuProbe:
        """This probe (the stack's servers) with a server under test in front."""
        return self if pid is None else CpuProbe((("server", pid), *self.roots))


def per_request_us(cpu_s: dict[str, float], requests: int) -> dict[str, float]:
    return {part: cpu_s[part] * 1e6 / requests for part in PARTS if part in cpu_s and requests}
