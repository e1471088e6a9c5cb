"""DESIGN.md §9's performance targets, graded from the saved report (so the verdicts are what the JSON holds)."""

from __future__ import annotations

from typing import Any

from bench.throughput import ANCHOR_NAMES, GO, PGBENCH

# (scenario, anchor, least ratio of A to the anchor), each measured in the same run.
RATIO_GOALS = (
    ("hit", "ceiling:constant", 0.8),
    ("hit", GO, 0.6),
    ("uncached", GO, 0.5),
    ("recharge", GO, 1.5),
    ("recharge", PGBENCH, 0.5),
    ("boarding", GO, 1.2),
)
WRITE_P99_MS = 15.0  # recharge and boarding, open loop at 70 % of their maximum
LOG_COST_MAX = 0.03


def point(report: dict[str, Any], server: str, scenario: str, connections: int) -> dict[str, Any] | None:
    return next(
        (
            p
            for p in report.get("throughput", [])
            if p["server"] == server and p["scenario"] == scenario and p["connections"] == connections
        ),
        None,
    )


def open_loop(report: dict[str, Any], scenario: str) -> dict[str, Any] | None:
    return next((r for r in report.get("tail", {}).get("open_loop", []) if r["scenario"] == scenario), None)


def goal(name: str, measured: str, target: str, passed: bool | None) -> dict[str, Any]:
    return {"name": name, "measured": measured, "target": target, "passed": passed}


def ratio_goal(report: dict[str, Any], scenario: str, anchor: str, wanted: float, level: int) -> dict[str, Any] | None:
    found = point(report, "A", scenario, level)
    if found is None:
        return None
    name, ratio = ANCHOR_NAMES[anchor], found["anchors"].get(anchor)
    other = point(report, anchor, scenario if anchor == GO else anchor, level)
    if ratio is None or other is None:
        measured = f"{found['median']['rps']:,.0f} req/s; the {name} was not measured"
    else:
        unit = "TPS" if anchor == PGBENCH else "req/s"
        measured = f"{ratio:.2f}× ({found['median']['rps']:,.0f} vs {other['median']['rps']:,.0f} {unit})"
    return goal(
        f"{scenario} @ {level} conns vs the {name}",
        measured,
        f"≥ {wanted}×",
        None if ratio is None else ratio >= wanted,
    )


def tail_goal(report: dict[str, Any], scenario: str, level: int) -> dict[str, Any] | None:
    """A write's p99 at 70 % of its maximum (open loop) and its errors, closed loop included."""
    found = point(report, "A", scenario, level)
    if found is None:
        return None
    tail = open_loop(report, scenario)
    errors = found["median"]["errors"] + (tail["errors"] if tail else 0)
    if tail is None:
        measured = f"no open-loop run; closed-loop p99 at saturation {found['median']['p99_ms']:.1f} ms"
    else:
        measured = f"p99 {tail['p99_ms']:.1f} ms at {tail['rate']:,.0f} req/s"
    return goal(
        f"{scenario} p99 at 70 % load",
        f"{measured}, {errors} errors",
        f"≤ {WRITE_P99_MS:g} ms, 0 errors",
        None if tail is None else tail["p99_ms"] <= WRITE_P99_MS and errors == 0,
    )


def grade(report: dict[str, Any]) -> list[dict[str, Any]]:
    level = 32 if 32 in report["settings"]["connections"] else max(report["settings"]["connections"])
    goals = [g for s, anchor, wanted in RATIO_GOALS if (g := ratio_goal(report, s, anchor, wanted, level))]
    goals += [g for scenario in ("recharge", "boarding") if (g := tail_goal(report, scenario, level))]
    if (log := report.get("log_cost")) and log["cost"] is not None:
        goals.append(
            goal(
                "request log (hit req/s, on vs off)",
                f"costs {log['cost']:.1%}",
                f"≤ {LOG_COST_MAX:.0%}",
                None if log["invalid"] else log["cost"] <= LOG_COST_MAX,
            )
        )
    tail = report.get("tail", {})
    if burst := tail.get("burst"):
        goals.append(
            goal(
                f"{burst['requests']} concurrent requests for one cold key",
                f"{burst['loads']} PostgreSQL load(s) ({burst['loads_from']}), {burst['not_200']} "
                f"answers other than 200",
                "1 load, 0 answers other than 200",
                burst["passed"],
            )
        )
    if sustained := tail.get("sustained"):
        goals.append(
            goal(
                f"sustained mix, {sustained['seconds']:.0f} s",
                f"max {sustained['max_ms']:.0f} ms, "
                f"{sustained['silent_seconds']} silent second(s), {sustained['errors']} errors",
                "no stall > 1 s",
                not sustained["stalled"],
            )
        )
    return goals


def invalid_rows(report: dict[str, Any]) -> list[str]:
    """Every row whose answers were not what it claims (each one makes the bench exit 1)."""
    reasons = [reason for p in report.get("throughput", []) for reason in p["invalid"]]
    reasons += [reason for r in report.get("tail", {}).get("open_loop", []) for reason in r["invalid"]]
    reasons += report.get("log_cost", {}).get("invalid", [])
    for label, rows in report.get("latency", {}).items():
        reasons += [
            f"latency {label} {r['endpoint']} {r['case']}: {r['unexpected']} of {r['n']} answers did not "
            f"say X-Cache: {r['case']}"
            for r in rows
            if r.get("unexpected")
        ]
    for scale in report.get("scale", []):
        reasons += [
            f"scale {scale['scale']} {path}: {c['unexpected']} answers were not misses"
            for path, c in scale["costs"].items()
            if c.get("unexpected")
        ]
    return reasons
