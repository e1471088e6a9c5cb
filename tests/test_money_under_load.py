"""Money under load (issue 5): 64 concurrent recharges, boardings and idempotent replays on ONE
card through HTTP, while a second load of 64 requests runs on 16 other cards. Afterwards every
balance is exactly what the answers say was added and taken, none is negative, each
idempotency key made one recharge, and the reconciliation query passes over every card."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Awaitable
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support.api import SITP_FARE, assert_problem, json_body, make_user_with_card
from tests.support.db import assert_balances_reconcile, assert_counters_exact
from tests.support.stack import Api, check_answer
from travel.database import QUERIES

pytestmark = pytest.mark.slow  # hundreds of concurrent writes: seconds


class Ledger:
    """What the answers say happened to each card: distinct recharges and charged fares."""

    def __init__(self) -> None:
        self.recharges: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)  # card -> recharge_id -> answer
        self.boardings: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self.refused_boardings: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self.by_key: dict[str, list[httpx.Response]] = defaultdict(list)
        self.reads: dict[int, list[int]] = defaultdict(list)

    def take(self, kind: str, card_id: int, response: httpx.Response, key: str | None = None) -> None:
        if kind == "recharge":
            body = json_body(response, 201)
            assert body["card_id"] == card_id and body["balance"] >= 0
            previous = self.recharges[card_id].setdefault(body["recharge_id"], body)
            assert previous == body  # a replay answers exactly the first answer
            if key is not None:
                self.by_key[key].append(response)
        elif kind == "board":
            if response.status_code == 402:
                problem = assert_problem(response, 402, "INSUFFICIENT_BALANCE")
                assert 0 <= problem["balance"] < problem["fare"]
                self.refused_boardings[card_id].append(problem)
            else:
                body = json_body(response, 201)
                assert body["card_id"] == card_id and body["balance"] >= 0 and body["fare_charged"] >= 0
                self.boardings[card_id].append(body)
        else:
            body = json_body(response)
            assert body["balance"] >= 0
            self.reads[card_id].append(body["balance"])

    def expected(self, card_id: int, opening: int) -> int:
        return (
            opening
            + sum(body["amount"] for body in self.recharges[card_id].values())
            - sum(body["fare_charged"] for body in self.boardings[card_id])
        )

    def assert_serial_history(self, card_id: int, opening: int, final: int) -> None:
        """Each write saw the balance some other write (or the opening) left: the balances the
        answers report chain from the opening to the final balance, one step per write."""
        steps = [(body["balance"] - body["amount"], body["balance"]) for body in self.recharges[card_id].values()]
        steps += [(body["balance"] + body["fare_charged"], body["balance"]) for body in self.boardings[card_id]]
        assert Counter([opening] + [after for _, after in steps]) == Counter([before for before, _ in steps] + [final])
        seen = {opening} | {after for _, after in steps}
        for problem in self.refused_boardings[card_id]:  # a refusal saw a real balance too
            assert problem["balance"] in seen, problem


async def test_64_way_load_on_one_card_under_a_second_load_keeps_every_peso(api: Api) -> None:
    rng = random.Random(64)
    hot_opening = 20_000
    _, hot = await make_user_with_card(api, hot_opening)
    hot_id = hot["card_id"]
    others = [card["card_id"] for _, card in [await make_user_with_card(api, 10_000) for _ in range(16)]]
    openings = {hot_id: hot_opening, **{card_id: 10_000 for card_id in others}}

    ledger = Ledger()
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(
        base_url=str(api.http.base_url), limits=limits, timeout=30, event_hooks={"response": [check_answer]}
    ) as http:

        async def recharge(card_id: int, amount: int, role: str, key: str | None = None) -> None:
            headers = api.auth(role) | ({"Idempotency-Key": key} if key else {})
            response = await http.post("/recharges", headers=headers, json={"card_id": card_id, "amount": amount})
            ledger.take("recharge", card_id, response, key)

        async def board(card_id: int, route_id: int, station_id: int) -> None:
            response = await http.post(
                "/trips",
                headers=api.auth("validator"),
                json={"card_id": card_id, "route_id": route_id, "boarding_station_id": station_id},
            )
            ledger.take("board", card_id, response)

        async def read(card_id: int) -> None:
            ledger.take("read", card_id, await http.get(f"/cards/{card_id}/balance"))

        # ONE card: 24 plain recharges, 8 keys sent 3 times each, 16 boardings (bus and cable,
        # so some are transfers): 64 requests at once.
        hot_load: list[Awaitable[None]] = [
            recharge(hot_id, 1000 + 37 * n, ("admin", "recharge_point")[n % 2]) for n in range(24)
        ]
        hot_load += [recharge(hot_id, 2000 + k, "recharge_point", f"hot-{k}") for k in range(8) for _ in range(3)]
        hot_load += [board(hot_id, *((1, 1), (3, 3))[n % 2]) for n in range(16)]
        # 16 other cards, 4 requests each: a recharge, a keyed recharge, a boarding, a balance read.
        cold_load: list[Awaitable[None]] = []
        for n, card_id in enumerate(others):
            cold_load += [
                recharge(card_id, 500 + n, "admin"),
                recharge(card_id, 700, "recharge_point", f"cold-{n}"),
                board(card_id, 1, 1),
                read(card_id),
            ]
        assert (len(hot_load), len(cold_load)) == (64, 64)
        rng.shuffle(hot_load)
        rng.shuffle(cold_load)
        await asyncio.gather(asyncio.gather(*hot_load), asyncio.gather(*cold_load))

        # Every balance is exact, in PostgreSQL and through the (invalidated) cache.
        conn = await asyncpg.connect(api.database_url)
        try:
            balances = {
                row["card_id"]: row["balance"]
                for row in await conn.fetch(
                    "SELECT card_id, balance FROM cards WHERE card_id = ANY($1::bigint[])", list(openings)
                )
            }
            for card_id, opening in openings.items():
                expected = ledger.expected(card_id, opening)
                assert balances[card_id] == expected, (card_id, balances[card_id], expected)
                assert json_body(await http.get(f"/cards/{card_id}/balance"))["balance"] == expected
                ledger.assert_serial_history(card_id, opening, expected)
            assert len(ledger.boardings[hot_id]) + len(ledger.refused_boardings[hot_id]) == 16
            assert len(ledger.recharges[hot_id]) == 24 + 8

            # One recharge per idempotency key: every send of a key got the same answer, one of
            # them made it, and the table holds one row for it.
            assert len(ledger.by_key) == 8 + 16
            for key, responses in ledger.by_key.items():
                assert len({response.json()["recharge_id"] for response in responses}) == 1, key
                assert sum("idempotent-replayed" not in response.headers for response in responses) == 1, key
            keyed = await conn.fetch("""
                SELECT k.idempotency_key, count(*) AS rows, count(DISTINCT k.recharge_id) AS recharges
                FROM idempotency_keys k JOIN recharges r USING (recharge_id)
                WHERE k.idempotency_key LIKE 'hot-%' OR k.idempotency_key LIKE 'cold-%'
                GROUP BY 1""")
            assert {row["idempotency_key"]: (row["rows"], row["recharges"]) for row in keyed} == {
                key: (1, 1) for key in ledger.by_key
            }
            stored = await conn.fetchval("SELECT count(*) FROM recharges WHERE card_id = $1", hot_id)
            assert stored == 1 + 24 + 8  # the opening recharge, the plain ones, one per key

            # No negative balance anywhere; the reconciliation query passes over every card.
            assert await conn.fetchval("SELECT count(*) FROM cards WHERE balance < 0") == 0
            assert [dict(row) for row in await QUERIES["unreconciled-cards"](conn)] == []
            await assert_balances_reconcile(conn)
            await assert_counters_exact(conn)
        finally:
            await conn.close()
    # Full fares, and transfers: 200 onto a bus, 0 onto the cable (README).
    assert {body["fare_charged"] for body in ledger.boardings[hot_id]} <= {SITP_FARE, 200, 0}
