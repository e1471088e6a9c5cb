"""Uncached reads straight from PostgreSQL, shared by identical reads that arrive together
(Database.read): one round trip for many, and never an answer older than its request."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.api import json_body, make_user
from tests.support.stack import Api
from travel import database


async def test_identical_reads_that_arrive_together_share_one_round_trip(api: Api, database_calls: list[str]) -> None:
    await make_user(api)
    database_calls.clear()
    answers = await asyncio.gather(*(api.http.get("/users/count") for _ in range(40)))
    assert {json_body(answer)["count"] for answer in answers} == {1}
    sent = database_calls.count("users-count")
    assert 1 <= sent < 40, sent  # 40 requests on 40 connections: far fewer statements


async def test_a_read_never_joins_one_already_sent(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that arrives after a write's answer must see the write, even while a shared
    read that started before the write is still out: it waits for a round trip of its own."""
    original = database.Database.run
    first_sent, release_first = asyncio.Event(), asyncio.Event()

    async def held_first(self: database.Database, query: database.Query, *args: Any) -> Any:
        if query.name == "users-count" and not first_sent.is_set():
            first_sent.set()
            answer = await original(self, query, *args)  # read before the write below
            await release_first.wait()
            return answer
        return await original(self, query, *args)

    monkeypatch.setattr(database.Database, "run", held_first)
    early = asyncio.ensure_future(api.http.get("/users/count"))
    await first_sent.wait()
    await make_user(api)  # committed and answered while the first read is out
    late = await api.http.get("/users/count")
    release_first.set()
    assert json_body(late)["count"] == 1  # its own round trip, after the write
    assert json_body(await early)["count"] == 0  # arrived before the write: the older figure


async def test_a_failed_shared_read_fails_each_request_that_shared_it(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unavailable(self: database.Database, query: database.Query, *args: Any) -> Any:
        raise ConnectionRefusedError("injected: PostgreSQL gone")

    monkeypatch.setattr(database.Database, "run", unavailable)
    answers = await asyncio.gather(*(api.http.get("/users/count") for _ in range(8)))
    assert [answer.status_code for answer in answers] == [503] * 8
    assert {answer.json()["code"] for answer in answers} == {"DATABASE_UNAVAILABLE"}
