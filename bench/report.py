"""The bench's report: Markdown for stdout and a PNG chart, both drawn from the JSON report
that bench/run.py saves (so what is printed is exactly what is kept)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.cpu import PARTS
from bench.throughput import ANCHOR_NAMES, GO, GO_SCENARIOS, PGBENCH

AGGREGATE_MISS_P50_MS = 2.0
AGGREGATE_GROWTH = 1.5
BIG_DATA_TRIPS = 10_000_000


def ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def header_lines(report: dict[str, Any]) -> list[str]:
    facts, settings = report["machine"], report["settings"]
    servers = ", ".join(f"{label} = {url}" for label, url in report["servers"].items())
    stack = report.get("stack", {})
    lines = [
        f"- command: `{report['command']}`",
        f"- started: {report['started']}",
        f"- machine: {facts['cores']} cores ({facts['cpu_model']}), {facts['memory_gib']} GiB; load average "
        f"{' / '.join(map(str, facts['load_average']))} before, {' / '.join(map(str, report['load_average_after']))}"
        f" after; Python {facts['python']}, Linux {facts['kernel']}",
        f"- servers: {servers or 'none (scale only)'}"
        + (
            f"; PostgreSQL {stack['postgres']} (fsync {stack['fsync']}, synchronous_commit "
            f"{stack['synchronous_commit']})"
            if "postgres" in stack
            else ""
        )
        + (f"; {stack['trips']:,} trips" if "trips" in stack else ""),
        "- as deployed: the API runs with its defaults (request log and metrics on), "
        f'WORKERS={report.get("workers", 1)}; only the row "request log cost" turns the log off, on a second '
        "instance on the same servers",
        f"- load: {report['generator']}, -t1, {settings['duration']:g} s per point after {settings['warmup']:g} s of "
        f"warm-up, {settings['rounds']} interleaved round(s), figures from the median round; {report['pinning']}",
        f"- note: {facts['cores']} cores shared by the load generator, the app, PostgreSQL and Redis, so every "
        "figure includes their contention; compare ratios measured in the same run, not absolute figures "
        "across machines.",
    ]
    if report.get("api_rss_mib_after"):
        lines.append(f"- API resident memory after the run: {report['api_rss_mib_after']:.0f} MiB")
    return lines


def latency_table(latency: dict[str, list[dict[str, Any]]]) -> str:
    if "B" not in latency:  # a row with answers other than its case is listed as invalid below the report
        rows = [
            [
                r["endpoint"],
                r["case"],
                str(r["n"]),
                ms(r["p50_ms"]),
                ms(r["p90_ms"]),
                ms(r["p99_ms"]),
                ms(r["max_ms"]),
                str(r["errors"]),
            ]
            for r in latency["A"]
        ]
        return markdown_table(["endpoint", "case", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"], rows)
    b_rows = {(r["endpoint"], r["case"]): r for r in latency["B"]}  # B has no MISS rows without its Redis
    rows = []
    for a in latency["A"]:
        cells = [a["endpoint"], a["case"], ms(a["p50_ms"]), ms(a["p99_ms"])]
        b = b_rows.get((a["endpoint"], a["case"]))
        if b is None:
            rows.append([*cells, "", "", "", str(a["errors"])])
        else:
            rows.append(
                [
                    *cells,
                    ms(b["p50_ms"]),
                    ms(b["p99_ms"]),
                    f"{b['p50_ms'] / a['p50_ms']:.2f}",
                    str(a["errors"] + b["errors"]),
                ]
            )
    return markdown_table(
        ["endpoint", "case", "A p50 ms", "A p99 ms", "B p50 ms", "B p99 ms", "B/A p50", "errors"], rows
    )


def cpu_cell(cpu_us: dict[str, float]) -> str:
    """CPU µs per answer of the server, PostgreSQL and Redis ("-": not measured)."""
    if not cpu_us:
        return ""
    return " · ".join(f"{cpu_us[part]:,.0f}" if part in cpu_us else "-" for part in PARTS)


def ratios_cell(anchors: dict[str, float | None]) -> str:
    return ", ".join(
        f"{ratio:.2f}× {anchor.removeprefix('ceiling:')}" for anchor, ratio in anchors.items() if ratio is not None
    )


def throughput_table(points: list[dict[str, Any]]) -> str:
    b_points = {(p["scenario"], p["connections"]): p for p in points if p["server"] == "B"}
    header = ["server", "scenario", "conns", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors"]
    header += ["CPU µs/answer: server · PG · Redis", "A / anchor"]
    if b_points:
        header += ["B req/s", "B p99 ms", "B errors", "B/A req/s"]
    rows = []
    for point in points:
        if point["server"] == "B":
            continue
        m = point["median"]
        ratio = ratios_cell(point["anchors"])
        if not ratio and point.get("ratio_to_a"):
            ratio = f"{point['ratio_to_a']:.2f}× A"
        name = point["scenario"] + (" **INVALID**" if point["invalid"] else "")
        cells = [
            point["server"],
            name,
            str(point["connections"]),
            f"{m['rps']:,.0f}",
            ms(m["p50_ms"]),
            ms(m["p99_ms"]),
            ms(m["p999_ms"]),
            ms(m["max_ms"]),
            str(m["errors"]),
            cpu_cell(point["cpu_us"]),
            ratio,
        ]
        if b_points:
            b = b_points.get((point["scenario"], point["connections"]))
            cells += (
                [
                    f"{b['median']['rps']:,.0f}",
                    ms(b["median"]["p99_ms"]),
                    str(b["median"]["errors"]),
                    f"{b['ratio_to_a']:.2f}",
                ]
                if b and point["server"] == "A"
                else [""] * 4
            )
        rows.append(cells)
    return markdown_table(header, rows)


def go_table(points: list[dict[str, Any]]) -> str | None:
    """The seed's question: this service against the Go version, path by path, in the same rounds."""
    found = {(p["server"], p["scenario"], p["connections"]): p for p in points}
    rows = []
    for p in points:
        go = found.get((GO, p["scenario"], p["connections"]))
        if p["server"] != "A" or go is None:
            continue
        ratio = p["anchors"].get(GO)
        ours_cpu, go_cpu = p["cpu_us"].get("server"), go["cpu_us"].get("server")
        rows.append(
            [
                p["scenario"],
                str(p["connections"]),
                f"{p['median']['rps']:,.0f}",
                f"{go['median']['rps']:,.0f}",
                "" if ratio is None else f"**{ratio:.2f}×**",
                "" if ours_cpu is None else f"{ours_cpu:,.0f}",
                "" if go_cpu is None else f"{go_cpu:,.0f}",
                "" if not (ours_cpu and go_cpu) else f"{ours_cpu / go_cpu:.1f}×",
            ]
        )
    if not rows:
        return None
    return markdown_table(
        ["path", "conns", "ours req/s", "Go req/s", "ours/Go", "ours CPU µs/answer", "Go CPU µs/answer", "CPU ours/Go"],
        rows,
    )


def anchors_note(report: dict[str, Any]) -> str:
    go, pgbench = report.get("go"), report.get("pgbench")
    lines = [
        "Anchors (DESIGN.md §9): "
        + "; ".join(f"{k.removeprefix('ceiling:')} = {v}" for k, v in ANCHOR_NAMES.items())
        + ". The Python apps (bench/ceilings.py) serve one uvicorn worker each."
    ]
    if go:
        lines.append(
            f"Go version: {go['binary']} ({go['version']}), GOMAXPROCS={go['gomaxprocs']} (the API's WORKERS), on "
            f"the API's cores and the same PostgreSQL and Redis; it runs {', '.join(GO_SCENARIOS)}, one transaction "
            "a write."
        )
    elif report.get("go_skipped"):
        lines.append(f"Go version: not measured ({report['go_skipped']}).")
    if pgbench:
        lines.append(
            f"{PGBENCH}: {pgbench['version']}, `{pgbench['statement']}` autocommit, :id random among the bench's "
            f"{pgbench['cards']} write cards, -M prepared, clients = conns, one thread on the load generator's core; "
            "its req/s are transactions per second."
        )
    elif report.get("pgbench_skipped"):
        lines.append(f"pgbench: not measured ({report['pgbench_skipped']}).")
    lines.append(
        "CPU µs/answer: utime + stime (/proc) of the server and its workers, of PostgreSQL (postmaster and "
        "backends) and of Redis over the measured run of the median round, divided by its answers."
    )
    return "\n".join(f"- {line}" for line in lines)


def log_cost_line(log: dict[str, Any]) -> str:
    if log["invalid"]:
        return f"request log cost: **invalid**: {log['invalid'][0]}"
    cost = "n/a" if log["cost"] is None else f"{log['cost']:.1%}"
    return (
        f"request log cost: {cost} of cache-hit req/s (A as deployed vs the same API with {log['env']}, "
        "interleaved rounds, same servers; median of per-round ratios)"
    )


def tail_parts(tail: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["scenario"] + (" **INVALID**" if r["invalid"] else ""),
            f"{r['rate']:,.0f}",
            f"{r['rps']:,.0f}",
            ms(r["p50_ms"]),
            ms(r["p99_ms"]),
            ms(r["p999_ms"]),
            ms(r["max_ms"]),
            str(r["errors"]),
            ms(r["generator_lag_p99_ms"]),
        ]
        for r in tail["open_loop"]
    ]
    parts = [
        "## Open loop: a fixed rate, latency from each request's intended start",
        "At 70 % of the median round's req/s; coordinated omission cannot hide a stall here. Generator "
        "lag: how late the generator's own event loop woke (p99), included in every latency; when it is not "
        "small beside p99, the generator, not the API, made the tail.",
        markdown_table(
            [
                "scenario",
                "asked req/s",
                "answered req/s",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "errors",
                "generator lag p99 ms",
            ],
            rows,
        ),
    ]
    s = tail["sustained"]
    parts.append(
        f"**Sustained mix** (90 % reads / 10 % writes, {s['connections']} connections, {s['seconds']:.0f} s): "
        f"{s['rps']:,.0f} req/s, p50 {ms(s['p50_ms'])} ms, p99 {ms(s['p99_ms'])} ms, p99.9 "
        f"{ms(s['p999_ms'])} ms, max {ms(s['max_ms'])} ms, {s['errors']} errors, {s['silent_seconds']} "
        f"second(s) without an answer: {'**stalled** (> 1 s)' if s['stalled'] else 'no stall > 1 s'}."
    )
    b = tail["burst"]
    parts.append(
        f"**Burst**: {b['requests']} concurrent GET {b['path']} right after a boarding made it cold: "
        f"{b['loads']} PostgreSQL load(s) (from {b['loads_from']}); answers {b['statuses']}; X-Cache "
        f"{b['cache']}."
    )
    return parts


def goals_table(goals: list[dict[str, Any]]) -> str:
    verdict = {True: "PASS", False: "FAIL", None: "n/a"}
    return markdown_table(
        ["goal (DESIGN.md §9)", "measured", "target", "result"],
        [[g["name"], g["measured"], g["target"], verdict[g["passed"]]] for g in goals],
    )


def scale_table(points: list[dict[str, Any]]) -> str:
    header = ["endpoint (miss p50 ms)"] + [f"{p['trips']:,} trips (scale {p['scale']})" for p in points]
    header += ["largest / smallest", "goal"]
    rows = []
    for path in points[0]["costs"]:
        costs = [p["costs"][path]["p50_ms"] for p in points]
        growth = costs[-1] / costs[0] if costs[0] else float("nan")
        if points[-1]["trips"] < BIG_DATA_TRIPS:
            verdict = "n/a (< 10M trips)"
        else:
            passed = costs[-1] <= AGGREGATE_MISS_P50_MS and (len(points) < 2 or growth <= AGGREGATE_GROWTH)
            verdict = "PASS" if passed else "FAIL"
        rows.append([path, *(ms(c) for c in costs), f"{growth:.2f}×", verdict])
    return markdown_table(header, rows) + (
        f"\n\nGoal: p50 ≤ {AGGREGATE_MISS_P50_MS:g} ms at ≥ 10M trips, and ≤ {AGGREGATE_GROWTH}× its cost at the "
        "smallest scale. /users/count and /users/active/count are uncached: every request reads PostgreSQL."
    )


def markdown(report: dict[str, Any]) -> str:
    parts = ["# Travel Recharge API — bench", "\n".join(header_lines(report))]
    if report.get("latency"):
        parts += [
            "## Latency: sequential requests on one keep-alive connection",
            "MISS: made cold before each read by a write through the API (or an id never read); HIT: "
            "read again; every answer's X-Cache is checked. uncached: read from PostgreSQL every time.",
            latency_table(report["latency"]),
        ]
    if report.get("throughput"):
        parts += ["## Throughput (closed loop)", throughput_table(report["throughput"]), anchors_note(report)]
        if go := go_table(report["throughput"]):
            parts += ["## This service and the Go version (same servers, interleaved rounds)", go]
    if report.get("log_cost"):
        parts.append(log_cost_line(report["log_cost"]))
    if report.get("tail"):
        parts += tail_parts(report["tail"])
    if report.get("goals"):
        parts += ["## Goals", goals_table(report["goals"])]
    if report.get("scale"):
        parts += ["## Aggregate cache-miss cost against data size", scale_table(report["scale"])]
    return "\n\n".join(parts)


def save_chart(report: dict[str, Any], path: Path) -> bool:
    """Latency percentiles per scenario (ceilings included), one panel per concurrency level;
    with --vs, B's bars (hatched) stand beside A's. False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    points = report["throughput"]
    levels = sorted({p["connections"] for p in points})
    labels = [label for label in ("A", "B") if any(p["server"] == label for p in points)]
    percentiles = (("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"))
    width = 0.8 / (len(percentiles) * len(labels))
    figure, axes = plt.subplots(len(levels), 1, figsize=(12, 4.2 * len(levels)), squeeze=False)
    for axis, level in zip(axes[:, 0], levels, strict=True):
        at_level = [p for p in points if p["connections"] == level]
        names = list(dict.fromkeys(p["scenario"] for p in at_level))
        for t_index, label in enumerate(labels):
            for p_index, (percent, attribute) in enumerate(percentiles):
                xs, heights = [], []
                for x, name in enumerate(names):
                    # A ceiling is its own server and is drawn once, in A's place.
                    server = name if name.startswith("ceiling:") else label
                    point = next((p for p in at_level if p["server"] == server and p["scenario"] == name), None)
                    if point is None or (t_index and server != label):
                        continue
                    xs.append(x - 0.4 + width * (t_index * len(percentiles) + p_index + 0.5))
                    heights.append(point["median"][attribute])
                axis.bar(
                    xs,
                    heights,
                    width,
                    color=f"C{p_index}",
                    hatch="//" if t_index else "",
                    alpha=0.6 if t_index else 1.0,
                    label=f"{label} {percent}" if len(labels) > 1 else percent,
                )
        axis.set_xticks(range(len(names)), names, rotation=20, ha="right")
        axis.set_yscale("log")
        axis.set_ylabel("latency, ms (log scale)")
        axis.set_title(f"{level} connections (median round)")
        axis.legend(ncol=len(labels), fontsize="small")
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
