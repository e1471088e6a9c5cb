"""docs/design.md: performance's targets, graded from the saved report (so the verdicts are what the JSON holds)."""

from __future__ import annotations

from typing import Any

from bench.throughput import CEILING_OF, GOAL_RATIO, LOG_COST_MAX, WRITE_P99_MS

CEILING_NAMES = {"redis-get": "one-GET app", "pg-select": "one-SELECT app", "pg-update": "durable-write floor"}


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


def ratio_goal(report: dict[str, Any], scenario: str, level: int) -> dict[str, Any] | None:
    found = point(report, "A", scenario, level)
    if found is None:
        return None
    ceiling, wanted = CEILING_NAMES[CEILING_OF[scenario]], GOAL_RATIO[scenario]
    ratio = found["of_ceiling"]
    measured = [f"{ratio:.2f}× {ceiling}" if ratio is not None else f"{found['median']['rps']:,.0f} req/s"]
    target = f"≥ {wanted}× {ceiling}"
    passed = ratio >= wanted if ratio is not None else None
    if scenario in ("recharge", "boarding"):
        tail = open_loop(report, scenario)
        p99, where = (tail["p99_ms"], "open loop") if tail else (found["median"]["p99_ms"], "closed loop")
        errors = found["median"]["errors"] + (tail["errors"] if tail else 0)
        measured += [f"p99 {p99:.1f} ms ({where})", f"{errors} errors"]
        target += f", p99 ≤ {WRITE_P99_MS:g} ms, 0 errors"
        passed = passed if passed is None else passed and p99 <= WRITE_P99_MS and errors == 0
    return goal(f"{scenario} @ {level} conns", ", ".join(measured), target, passed)


def grade(report: dict[str, Any]) -> list[dict[str, Any]]:
    level = 32 if 32 in report["settings"]["connections"] else max(report["settings"]["connections"])
    goals = [g for scenario in GOAL_RATIO if (g := ratio_goal(report, scenario, level)) is not None]
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
