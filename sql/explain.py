"""sql/explain.py: the plan of every named query of sql/queries/ on a real database.

    .venv/bin/python -m sql.explain --data /tmp/demo100 > bench/results/explain-10M.md

It measures the database, not the service, so it talks SQL to PostgreSQL through database.py's
loader (bench/ reaches the service over HTTP only, and so lives apart from this).

Starts the stack in `--data` (travel.startup.embedded.EmbeddedStack; a DEMO_SCALE=100 database: 10M trips),
applies the schema as the server does, picks realistic parameters with small queries (a card
with trips, a user with recharges, an open trip, ...), and runs
`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` for each query: one warm-up, then `--runs` runs
whose median planning and execution times are reported. Writes (the PL/pgSQL and SQL
functions) run inside a transaction that is rolled back, so no row changes (sequences
still advance: nextval is not transactional).

EXPLAIN shows a function call as one Function Scan (or Result) node, so each function is
also run once more with auto_explain on (log_nested_statements, log_analyze, JSON, sent to
this session as NOTICEs) and the plans of its nested statements are reported: their node
types and any Seq Scan on a table of more than 10,000 rows. Prints Markdown; the stack is
stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import re
import secrets
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from travel import PROJECT_ROOT, database
from travel.startup.embedded import EmbeddedStack

BIG_TABLE_ROWS = 10_000
# Not on a request's path: the reconciliation audit (README: Reliability) and the
# background pruning task; nor on the Python service's: the Go version's single-item writes
# (go/README.md). Everything else serves a request.
OFF_HOT_PATH = {
    "unreconciled-cards": "audit",
    "prune-idempotency-keys": "background task",
    "recharge-card": "Go version",
    "board-trip": "Go version",
}
USER_FUNCTIONS = set(
    re.findall(r"CREATE OR REPLACE FUNCTION (\w+)\s*\(", (PROJECT_ROOT / "sql" / "functions.sql").read_text())
)


@dataclass
class Nested:
    text: str
    duration_ms: float
    nodes: list[str]
    seq_big: list[str]


@dataclass
class Result:
    name: str
    write: bool
    planning_ms: float
    execution_ms: float
    nodes: list[str]
    seq_big: list[str]
    hit: int
    read: int
    nested: list[Nested] = field(default_factory=list)
    function: str | None = None


def calls_function(sql: str) -> str | None:
    """The function of functions.sql that `sql` calls, if any."""
    return next((f for f in sorted(USER_FUNCTIONS) if re.search(rf"\b{f}\s*\(", sql)), None)


def describe(node: dict[str, Any]) -> str:
    """One plan node the way EXPLAIN's text format names it."""
    kind = node["Node Type"]
    if kind == "ModifyTable":
        return f"{node['Operation']} on {node['Relation Name']}"
    if kind == "Aggregate":
        kind = {"Hashed": "HashAggregate", "Sorted": "GroupAggregate"}.get(node.get("Strategy"), "Aggregate")
    if node.get("Parallel Aware"):
        kind = f"Parallel {kind}"
    join = node.get("Join Type")
    if join not in (None, "Inner"):  # Nested Loop Left Join, Hash Right Join, Merge Anti Join
        kind = f"{kind.removesuffix(' Join')} {join} Join"
    if "Index Name" in node:
        return f"{kind} using {node['Index Name']}"
    if "Relation Name" in node:
        return f"{kind} on {node['Relation Name']}"
    if "Function Name" in node:
        return f"{kind} on {node['Function Name']}"
    return kind


def walk(node: dict[str, Any]):
    yield node
    for child in node.get("Plans", ()):
        yield from walk(child)


def distinct(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


class Explainer:
    def __init__(self, conn: asyncpg.Connection, runs: int) -> None:
        self.conn = conn
        self.runs = runs
        self.rows: dict[str, int] = {}  # relation -> rows, capped at BIG_TABLE_ROWS + 1
        self.notices: list[str] = []
        conn.add_log_listener(lambda _c, message: self.notices.append(message.message))

    async def table_rows(self, relation: str) -> int:
        if relation not in self.rows:
            quoted = '"' + relation.replace('"', '""') + '"'
            self.rows[relation] = await self.conn.fetchval(
                f"SELECT count(*) FROM (SELECT FROM {quoted} LIMIT {BIG_TABLE_ROWS + 1}) s"
            )
        return self.rows[relation]

    async def big_seq_scans(self, plan: dict[str, Any]) -> list[str]:
        found = []
        for node in walk(plan):
            if node["Node Type"] == "Seq Scan" and await self.table_rows(node["Relation Name"]) > BIG_TABLE_ROWS:
                found.append(node["Relation Name"])
        return distinct(found)

    async def _explain_once(self, sql: str, args: tuple[Any, ...], write: bool) -> dict[str, Any]:
        statement = f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}"
        if not write:
            return json.loads(await self.conn.fetchval(statement, *args))[0]
        tx = self.conn.transaction()
        await tx.start()
        try:
            return json.loads(await self.conn.fetchval(statement, *args))[0]
        finally:
            await tx.rollback()

    async def explain(self, name: str, sql: str, args: tuple[Any, ...], write: bool) -> Result:
        await self._explain_once(sql, args, write)  # warm-up: caches, plpgsql plans
        outputs = [await self._explain_once(sql, args, write) for _ in range(self.runs)]
        last = outputs[-1]
        plan = last["Plan"]
        function = calls_function(sql)
        result = Result(
            name=name,
            write=write,
            planning_ms=statistics.median(o["Planning Time"] for o in outputs),
            execution_ms=statistics.median(o["Execution Time"] for o in outputs),
            nodes=distinct(describe(n) for n in walk(plan)),
            seq_big=await self.big_seq_scans(plan),
            hit=plan.get("Shared Hit Blocks", 0),
            read=plan.get("Shared Read Blocks", 0),
            function=function,
        )
        if function:
            result.nested = await self.nested_plans(sql, args)
        return result

    async def nested_plans(self, sql: str, args: tuple[Any, ...]) -> list[Nested]:
        """The function's own statements (and its triggers' and FK checks'), by auto_explain."""
        self.notices.clear()
        tx = self.conn.transaction()
        await tx.start()
        try:
            await self.conn.execute(
                "SET LOCAL auto_explain.log_min_duration = 0; SET LOCAL auto_explain.log_nested_statements = on;"
                " SET LOCAL auto_explain.log_analyze = on; SET LOCAL auto_explain.log_buffers = on;"
                " SET LOCAL auto_explain.log_format = json; SET LOCAL auto_explain.log_level = notice;"
                " SET LOCAL client_min_messages = notice"
            )
            await self.conn.fetch(sql, *args)
            # SET LOCAL statements are logged too when executed: skip everything but plans.
        finally:
            await tx.rollback()
        await asyncio.sleep(0)  # let the listener callbacks run
        nested = []
        for message in self.notices:
            match = re.match(r"duration: ([\d.]+) ms\s+plan:\s*", message)
            if not match:
                continue
            document = json.loads(message[match.end() :])
            text = " ".join(document.get("Query Text", "").split())
            if text == " ".join(sql.split()) or text.startswith("SET LOCAL"):
                continue  # the top-level call itself
            plan = document["Plan"]
            nested.append(
                Nested(
                    text,
                    float(match.group(1)),
                    distinct(describe(n) for n in walk(plan)),
                    await self.big_seq_scans(plan),
                )
            )
        return nested


async def pick_parameters(conn: asyncpg.Connection) -> tuple[str, dict[str, tuple[Any, ...]]]:
    """Realistic arguments for every query, each found with a small indexed query."""
    one = conn.fetchrow
    max_trip = await conn.fetchval("SELECT max(trip_id) FROM trips")
    trip = await one("SELECT trip_id, card_id FROM trips WHERE trip_id >= $1 ORDER BY trip_id LIMIT 1", max_trip // 2)
    max_recharge = await conn.fetchval("SELECT max(recharge_id) FROM recharges")
    recharger = await one(
        "SELECT r.card_id, c.user_id FROM recharges r JOIN cards c USING (card_id)"
        " WHERE r.recharge_id >= $1 ORDER BY r.recharge_id LIMIT 1",
        max_recharge // 2,
    )
    # A card with trips that can pay any fare: boarding then reads its latest trip.
    rider = await one(
        "SELECT t.card_id FROM trips t JOIN cards c USING (card_id)"
        " WHERE t.trip_id >= $1 AND c.status = 'active' AND c.balance >= (SELECT max(value) FROM fares)"
        " ORDER BY t.trip_id LIMIT 1",
        max_trip // 3,
    )
    route = await one(
        "SELECT route_id, origin_station_id, destination_station_id FROM routes"
        " WHERE is_active ORDER BY route_id LIMIT 1"
    )
    # The latest trip still open (a rider who boarded and has not alighted yet).
    open_trip = await conn.fetchval(
        "SELECT trip_id FROM trips WHERE disembarking_time IS NULL ORDER BY trip_id DESC LIMIT 1"
    )
    point = await conn.fetchval("SELECT recharge_point_id FROM recharge_points ORDER BY 1 LIMIT 1")
    token = await one("SELECT token_id, token_hash FROM write_tokens WHERE revoked_at IS NULL ORDER BY 1 LIMIT 1")
    tag = secrets.token_hex(6)
    trip_count = await conn.fetchval("SELECT count(*) FROM trips WHERE card_id = $1", trip["card_id"])
    recharge_count = await conn.fetchval(
        "SELECT count(*) FROM recharges r JOIN cards c USING (card_id) WHERE c.user_id = $1", recharger["user_id"]
    )
    described = (
        f"trip {trip['trip_id']}; card {trip['card_id']} ({trip_count} trips);"
        f" user {recharger['user_id']} ({recharge_count} recharges); boarding and recharged card"
        f" {rider['card_id']} on route {route['route_id']}; open trip {open_trip} (end-trips);"
        f" recharge point {point}; token {token['token_id'] if token else None}"
    )
    return described, {
        "board-cards": ([rider["card_id"]], [route["route_id"]], [route["origin_station_id"]]),
        "board-trip": (rider["card_id"], route["route_id"], route["origin_station_id"]),
        "bump-cache-epoch": (),
        "cache-epoch": (),
        "card-balance": (trip["card_id"],),
        "card-trips": (trip["card_id"],),
        "create-user": (
            "Explain",
            "Bench",
            f"explain.{tag}@example.com",
            f"EXPL-{tag}",
            "3001234567",
            "F",
            dt.date(1990, 5, 17),
            "Calle 26 # 13-19",
            "Bogotá",
        ),
        "end-trips": ([open_trip], [route["destination_station_id"]]),
        "issue-card": (recharger["user_id"], None),
        "ping": (),
        "prune-idempotency-keys": (dt.timedelta(hours=24),),
        "recharge-cards": (
            [rider["card_id"]],
            [5000],
            [point],
            [token["token_id"] if token else None],
            [f"explain-{tag}" if token else None],
        ),
        "recharge-card": (
            rider["card_id"],
            5000,
            point,
            token["token_id"] if token else None,
            f"explain-one-{tag}" if token else None,
        ),
        "register-token": (hashlib.sha256(tag.encode()).digest(), "admin", "explain.py", None),
        "revenue-by-locality": (),
        "revenue-total": (),
        "routes-all": (),
        "set-card-status": (trip["card_id"], "blocked"),
        "stations-all": (),
        "token-by-hash": (token["token_hash"] if token else hashlib.sha256(b"none").digest(),),
        "trip": (trip["trip_id"],),
        "trips-by-locality": (),
        "trips-hourly": (24,),
        "trips-total": (),
        "unreconciled-cards": (),
        "user-recharges": (recharger["user_id"],),
        "users-active-count": (),
        "users-count": (),
        "users-latest": (),
    }


def markdown(results: list[Result], trips: int, runs: int, parameters: str) -> str:
    lines = [
        f"## Query plans at {trips / 1e6:.0f}M trips",
        "",
        f"`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`, median of {runs} runs after one warm-up;"
        " writes in a rolled-back transaction. Seq scan: a Seq Scan on a table of more than"
        f" {BIG_TABLE_ROWS:,} rows (for functions: in any nested statement, by auto_explain)."
        " Buffers: shared hit/read of the last run's execution.",
        "",
        f"Parameters: {parameters}.",
        "",
        "| query | path | planning ms | execution ms | plan nodes | seq scan > 10k rows | shared hit/read |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        path = OFF_HOT_PATH.get(r.name, "hot")
        seq = list(r.seq_big)
        # The first nodes top down, and any big Seq Scan further down.
        nodes = ", ".join(distinct(r.nodes[:7] + [f"Seq Scan on {t}" for t in seq]))
        if r.nested:
            nested_nodes = distinct(
                n for s in r.nested for n in s.nodes if not n.startswith(("Result", "Limit", "LockRows"))
            )
            nodes += "; nested: " + ", ".join(nested_nodes)
            seq += [t for s in r.nested for t in s.seq_big]
        seq_text = f"**yes: {', '.join(distinct(seq))}**" if seq else "no"
        lines.append(
            f"| {r.name}{' (write)' if r.write else ''} | {path} | {r.planning_ms:.3f} |"
            f" {r.execution_ms:.3f} | {nodes} | {seq_text} | {r.hit}/{r.read} |"
        )
    lines += ["", "### Nested statements of the functions (auto_explain, one run, rolled back)", ""]
    for r in results:
        if not r.nested:
            continue
        lines += [
            f"**{r.name}** (`{r.function}`)",
            "",
            "| statement | ms | plan nodes | seq scan > 10k rows |",
            "| --- | --- | --- | --- |",
        ]
        for s in r.nested:
            text = s.text if len(s.text) <= 90 else s.text[:87] + "..."
            text = text.replace("|", "\\|")
            lines.append(
                f"| `{text}` | {s.duration_ms:.3f} | {', '.join(s.nodes)} |"
                f" {'**yes: ' + ', '.join(s.seq_big) + '**' if s.seq_big else 'no'} |"
            )
        lines.append("")
    return "\n".join(lines)


async def run(url: str, runs: int, only: set[str]) -> str:
    conn = await asyncpg.connect(
        url, timeout=30, command_timeout=None, server_settings={"jit": "off"}
    )  # as the API's pool
    try:
        await database.apply_schema(conn)
        await conn.execute("LOAD 'auto_explain'")
        explainer = Explainer(conn, runs)
        described, parameters = await pick_parameters(conn)
        results = []
        for name, query in database.load_queries().items():
            if only and name not in only:
                continue
            if name not in parameters:
                raise SystemExit(f"sql/explain.py: no parameters for query {name!r}")
            # Every call of one of our functions is a write (functions.sql: "every write is one
            # call of one of these functions").
            write = calls_function(query.sql) is not None
            print(f"explain: {name}", file=sys.stderr, flush=True)
            results.append(await explainer.explain(name, query.sql, parameters[name], write))
        trips = await conn.fetchval("SELECT coalesce(sum(trips), 0)::bigint FROM trip_counters")
        return markdown(results, trips, runs, described)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a EmbeddedStack directory (e.g. /tmp/demo100)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated query names")
    args = parser.parse_args()
    stack = EmbeddedStack(args.data)
    try:
        database_url, _ = stack.start()
        print(asyncio.run(run(database_url, args.runs, set(filter(None, args.only.split(","))))))
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
