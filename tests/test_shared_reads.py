"""Uncached reads straight from PostgreSQL, shared by identical reads that arrive together
(Database.read): one round trip for many, and never an answer older than its request."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.api import json_body, make_user
from tests.support.stack import Api
from travel import database


async def test_identical_reads_of_one_tick_share_one_round_trip(api: Api, database_calls: list[str]) -> None:
    """Reads asked in the same event-loop tick (as a burst of requests parsed together is):
    one statement for them all, and each its own answer."""
    await make_user(api)
    database_calls.clear()
    lagging: database.Database = api.state["lagging_db"]
    users_count = database.QUERIES["users-count"]
    asked = [lagging.read(users_count) for _ in range(40)]  # no await in between: one tick
    assert await asyncio.gather(*asked) == [1] * 40
    assert database_calls.count("users-count") == 1
    # Another query, or other arguments, is another read.
    both = [lagging.read(users_count), lagging.read(database.QUERIES["users-active-count"])]
    assert await asyncio.gather(*both) == [1, 0]
    assert database_calls.count("users-count") == 2 and database_calls.count("users-active-count") == 1


async def test_concurrent_requests_answer_alike(api: Api) -> None:
    await make_user(api)
    answers = await asyncio.gather(*(api.http.get("/users/count") for _ in range(40)))
    assert {json_body(answer)["count"] for answer in answers} == {1}


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
