"""What a load run returns, whichever generator ran it (wrk or the open loop): `LoadResult`.

Both tally every answer's status and `X-Cache` header, so that a row claiming cache hits can
prove it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypedDict


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
    cpu_s: dict[str, float] = field(default_factory=dict)  # part (bench/cpu.py) -> CPU seconds of the run

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


def tally(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1
