"""A steady stream of recharges with Idempotency-Keys, and the books checked afterwards.

Runs on the client host of the failover topology (deploy/topology/failover.py), as
`ip netns exec trfclient python recharge_stream.py API_URL TOKEN DATABASE_URL`, and does what
its parent asks, one JSON request per line on stdin, one JSON answer per line on stdout:

  {"op": "setup", "cards": 20}        fresh cards (balance 0) for one scenario
  {"op": "run", "concurrency": 4}     start the stream: each worker sends one recharge after
                                      another, every one under a new Idempotency-Key
  {"op": "status", "since": T}        what was answered since T (time.monotonic(): the
                                      machine's clock, the same in every namespace)
  {"op": "stop", "fault_at": T}       stop the stream; retry every request in doubt (503, or
                                      no answer) with its own key until it is answered; then
                                      read the database: every 201 there, each key applied
                                      once, every card reconciled
  {"op": "bench", "seconds": 10, "concurrency": 16}
                                      closed-loop recharges: throughput, p50, p99

Every request and every wait is bounded in time.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

REQUEST_TIMEOUT = 4.0  # the API answers a write within ~2 s even with PostgreSQL unreachable
RETRY_FOR = 60.0  # an in-doubt request is retried for up to this long after the stream stops


@dataclass
class Attempt:
    key: str
    card_id: int
    amount: int
    sent: float
    answered: float = 0.0
    status: int = 0  # 0: no answer (timeout, connection lost)
    recharge_id: int | None = None
    code: str = ""


@dataclass
class Stream:
    api: str
    token: str
    database_url: str
    client: httpx.AsyncClient = field(init=False)
    cards: list[int] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    running: bool = False

    def __post_init__(self) -> None:
        self.client = httpx.AsyncClient(
            base_url=self.api,
            headers={"Authorization": f"Bearer {self.token}"},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    async def post(self, path: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        return await self.client.post(path, json=body, headers=headers, timeout=REQUEST_TIMEOUT)

    async def setup(self, cards: int) -> dict[str, Any]:
        tag = uuid.uuid4().hex[:10]
        user = await self.post(
            "/users",
            {"first_name": "Fail", "last_name": "Over", "email": f"f{tag}@failover.example", "id_number": f"FO-{tag}"},
        )
        user.raise_for_status()
        self.cards, self.attempts = [], []
        for _ in range(cards):
            card = await self.post("/cards", {"user_id": user.json()["user_id"]})
            card.raise_for_status()
            self.cards.append(card.json()["card_id"])
        return {"ok": True, "cards": self.cards}

    async def send(self, attempt: Attempt) -> None:
        attempt.sent = time.monotonic()
        try:
            answer = await self.post("/recharges", {"card_id": attempt.card_id, "amount": attempt.amount}, attempt.key)
            attempt.status = answer.status_code
            body = answer.json() if answer.headers.get("content-type", "").endswith("json") else {}
            attempt.recharge_id = body.get("recharge_id") if answer.status_code == 201 else None
            attempt.code = body.get("code", "") if isinstance(body, dict) else ""
        except httpx.HTTPError as error:
            attempt.status, attempt.code = 0, error.__class__.__name__
        attempt.answered = time.monotonic()

    async def worker(self, number: int, pause: float) -> None:
        sequence = 0
        while self.running:
            card = self.cards[(number + sequence * 7) % len(self.cards)]
            attempt = Attempt(f"fo-{uuid.uuid4().hex}", card, 100 + (sequence % 900), time.monotonic())
            self.attempts.append(attempt)
            await self.send(attempt)
            sequence += 1
            await asyncio.sleep(pause)

    def run(self, concurrency: int, pause: float) -> dict[str, Any]:
        self.running = True
        self.workers = [asyncio.create_task(self.worker(n, pause)) for n in range(concurrency)]
        return {"ok": True}

    def status(self, since: float) -> dict[str, Any]:
        after = [a for a in self.attempts if a.answered and a.answered >= since]
        failures = [a for a in after if a.status != 201]
        first_failure = min((a.sent for a in failures), default=None)
        back = None
        if first_failure is not None:
            back = min((a.answered for a in after if a.status == 201 and a.sent > first_failure), default=None)
        return {
            "ok": sum(a.status == 201 for a in after),
            "failed": len(failures),
            "codes": sorted({f"{a.status} {a.code}" for a in failures}),
            "back_at": back,
            "first_failure_at": first_failure,
            "slowest_failure_s": max((a.answered - a.sent for a in failures), default=0.0),
        }

    async def stop(self, fault_at: float) -> dict[str, Any]:
        self.running = False
        await asyncio.gather(*self.workers, return_exceptions=True)
        status = self.status(fault_at)
        acknowledged = [a for a in self.attempts if a.status == 201]
        unexpected = [a for a in self.attempts if a.status not in (0, 201, 503)]
        in_doubt = [a for a in self.attempts if a.status in (0, 503)]
        deadline = time.monotonic() + RETRY_FOR
        pending = list(in_doubt)
        while pending and time.monotonic() < deadline:
            for attempt in pending:
                await self.send(attempt)  # the same key, card and amount
            pending = [a for a in pending if a.status in (0, 503)]
            if pending:
                await asyncio.sleep(0.5)
        books = await self.check_books(acknowledged, in_doubt)
        return {
            "ok": True,
            "acknowledged": len(acknowledged),
            "in_doubt": len(in_doubt),
            "unresolved": len(pending),
            "unexpected": [f"{a.status} {a.code}" for a in unexpected][:10],
            "back_s": (status["back_at"] - fault_at) if status["back_at"] else (None if status["failed"] else 0.0),
            "failed_after_fault": status["failed"],
            "codes": status["codes"],
            "slowest_failure_s": status["slowest_failure_s"],
            **books,
        }

    async def check_books(self, acknowledged: list[Attempt], in_doubt: list[Attempt]) -> dict[str, Any]:
        """Every 201 is in `recharges` as answered; each key of this stream was applied exactly
        once (per card: as many recharges, and as much money, as keys answered 201 in the end);
        every card's balance is its opening balance plus its recharges less its fares."""
        conn = await asyncpg.connect(self.database_url, timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT recharge_id, card_id, amount FROM recharges WHERE recharge_id = ANY($1::bigint[])",
                [a.recharge_id for a in acknowledged],
            )
            found = {row["recharge_id"]: (row["card_id"], row["amount"]) for row in rows}
            lost = [a for a in acknowledged if found.get(a.recharge_id) != (a.card_id, a.amount)]
            applied = [a for a in self.attempts if a.status == 201]  # acknowledged, and in doubt resolved
            expected: dict[int, tuple[int, int]] = {card: (0, 0) for card in self.cards}
            for a in applied:
                count, total = expected[a.card_id]
                expected[a.card_id] = (count + 1, total + a.amount)
            actual_rows = await conn.fetch(
                "SELECT c.card_id, c.balance, c.opening_balance,"
                " (SELECT count(*) FROM recharges r WHERE r.card_id = c.card_id) AS recharges,"
                " (SELECT coalesce(sum(amount), 0) FROM recharges r WHERE r.card_id = c.card_id) AS recharged,"
                " (SELECT coalesce(sum(fare_charged), 0) FROM trips t WHERE t.card_id = c.card_id) AS fares"
                " FROM cards c WHERE c.card_id = ANY($1::bigint[])",
                self.cards,
            )
            twice = [
                row["card_id"]
                for row in actual_rows
                if (row["recharges"], row["recharged"]) != expected[row["card_id"]]
            ]
            unreconciled = await conn.fetchval(
                "SELECT count(*) FROM cards c WHERE c.balance <> c.opening_balance"
                " + (SELECT coalesce(sum(amount), 0) FROM recharges r WHERE r.card_id = c.card_id)"
                " - (SELECT coalesce(sum(fare_charged), 0) FROM trips t WHERE t.card_id = c.card_id)"
            )
            resolved = [a for a in in_doubt if a.status == 201]
            # The cache is coherent: what the API answers (a cached read, twice) is the database's.
            incoherent = []
            for row in actual_rows:
                for _ in range(2):
                    answer = await self.client.get(f"/cards/{row['card_id']}/balance", timeout=REQUEST_TIMEOUT)
                    if answer.status_code != 200 or answer.json()["balance"] != row["balance"]:
                        incoherent.append(row["card_id"])
            return {
                "cache_incoherent_cards": sorted(set(incoherent))[:10],
                "lost": len(lost),
                "lost_examples": [a.key for a in lost][:5],
                "in_doubt_applied_once": len(resolved) == len(in_doubt) and not twice,
                "cards_not_matching_keys": twice[:10],
                "unreconciled_cards": unreconciled,
                "server": await conn.fetchval("SELECT inet_server_addr()::text"),
            }
        finally:
            await conn.close(timeout=5)

    async def bench(self, seconds: float, concurrency: int) -> dict[str, Any]:
        latencies: list[float] = []
        errors = 0
        stop_at = time.monotonic() + seconds

        async def one(number: int) -> None:
            nonlocal errors
            sequence = 0
            while time.monotonic() < stop_at:
                card = self.cards[(number * 31 + sequence) % len(self.cards)]
                started = time.perf_counter()
                try:
                    answer = await self.post("/recharges", {"card_id": card, "amount": 100}, f"b-{uuid.uuid4().hex}")
                    ok = answer.status_code == 201
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
                sequence += 1

        started = time.monotonic()
        await asyncio.gather(*(one(n) for n in range(concurrency)))
        elapsed = time.monotonic() - started
        latencies.sort()

        def pct(p: float) -> float:
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0.0

        return {
            "ok": True,
            "requests": len(latencies),
            "errors": errors,
            "throughput": len(latencies) / elapsed,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
        }


async def main() -> None:
    api, token, database_url = sys.argv[1:4]
    stream = Stream(api, token, database_url)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read_stdin, daemon=True).start()
    while (line := await lines.get()) is not None:
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "setup":
                answer = await stream.setup(int(request.get("cards", 20)))
            elif op == "run":
                answer = stream.run(int(request.get("concurrency", 4)), float(request.get("pause", 0.02)))
            elif op == "status":
                answer = stream.status(float(request["since"]))
            elif op == "stop":
                answer = await stream.stop(float(request["fault_at"]))
            elif op == "bench":
                answer = await stream.bench(float(request.get("seconds", 10)), int(request.get("concurrency", 16)))
            else:
                answer = {"error": f"unknown op {op!r}"}
        except Exception as error:  # reported to the parent, which fails the test with it
            answer = {"error": f"{error.__class__.__name__}: {error}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    stream.running = False
    await asyncio.gather(*stream.workers, return_exceptions=True)
    await stream.client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
