"""The Go version of the hot endpoints (go/, issue 18) against the Python service: both run on
ONE database and ONE Redis of the test session, and for each request both answer the same
status, the same body (modulo the ids, balances and timestamps of writes) and the same headers
that matter, bad input included; a cache key one fills, the other reads as a HIT; after a
write through one, the other serves the fresh value; an Idempotency-Key one stored, the other
replays. The Go server reads its statements from sql/queries/ (no copy of the SQL to drift).

The module builds go/bin/travel-go with go/build.sh (as root it installs Debian's golang
packages when missing; offline, GOPATH mode), then starts `python server.py` and the binary.
"""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis

from tests.support.servers import API, server_process
from tests.support.stack import TOKENS, copy_template, register_test_tokens
from travel import PROJECT_ROOT
from travel.database import QUERIES
from travel.startup.embedded import EmbeddedStack
from travel.startup.processes import ServerProcess, free_port

# It builds Go (and, as root, installs the Debian packages go/build.sh needs when missing).
pytestmark = [pytest.mark.slow, pytest.mark.root]

GO_BUILD = PROJECT_ROOT / "go" / "build.sh"
GO_BINARY = PROJECT_ROOT / "go" / "bin" / "travel-go"
SIDES = ("python", "go")
HEADERS = ("content-type", "x-cache", "allow", "www-authenticate", "retry-after", "idempotent-replayed")
# What two writes cannot share: their ids, balances and times (the fields stay, in their order).
VOLATILE = re.compile(
    rb'"(recharge_id|trip_id|balance|recharge_timestamp|boarding_time|transfer_group_id|is_transfer|fare_charged|fare_id)"'
    rb':("[^"]*"|[^,}]*)'
)


@dataclass
class Both:
    """The two servers on one database and one Redis, and what the module made there."""

    urls: dict[str, str]  # side -> base URL of the API (…/api/v1)
    processes: dict[str, ServerProcess]
    database_url: str
    redis_url: str
    cards: list[int]  # active cards with money, of one user
    trip: int  # a trip of cards[0]


@pytest.fixture(scope="module")
def go_binary() -> Path:
    """go/bin/travel-go, built (go build rebuilds only what changed)."""
    done = subprocess.run(["sh", str(GO_BUILD)], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)
    assert done.returncode == 0, f"go/build.sh failed:\n{done.stdout}\n{done.stderr}"
    assert GO_BINARY.is_file()
    return GO_BINARY


async def _seed(database_url: str) -> tuple[list[int], int]:
    """A user with three recharged cards, and one boarding of the first."""
    conn = await asyncpg.connect(database_url)
    try:
        user = await QUERIES["create-user"](
            conn, "Ana", "Rojas", "ana.go@example.com", "CC-GO-1", None, "F", datetime.date(1990, 5, 1), None, "Bogotá"
        )
        cards = [(await QUERIES["issue-card"](conn, user["user_id"], None))["card_id"] for _ in range(3)]
        for card in cards:
            await conn.execute("SELECT recharge_card($1, 200000, 1, NULL, NULL)", card)
        trip = await conn.fetchval("SELECT trip_id FROM board_trip($1, 1, 1)", cards[0])
    finally:
        await conn.close()
    return cards, trip


@pytest.fixture(scope="module")
async def both(
    stack: EmbeddedStack, template_url: str, go_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Both]:
    logs = tmp_path_factory.mktemp("go-contract")
    database_url = await copy_template(stack, f"go_contract_{uuid.uuid4().hex[:10]}")
    await register_test_tokens(database_url)
    cards, trip = await _seed(database_url)
    cache = redis.Redis.from_url(stack.redis.url)
    cache.flushdb()  # the cache keys do not name the database: start empty
    cache.close()
    env = {"DATABASE_URL": database_url, "REDIS_URL": stack.redis.url}
    processes = {
        "python": server_process(logs / "python.log", **env),
        # SQL_DIR unset: it finds sql/queries beside its binary, as `make go` leaves it.
        "go": ServerProcess({**env, "HOST": "127.0.0.1"}, command=[str(go_binary)], log_path=logs / "go.log"),
    }
    try:
        for process in processes.values():
            process.wait_healthy()
        urls = {side: process.base_url + API for side, process in processes.items()}
        yield Both(urls, processes, database_url, stack.redis.url, cards, trip)
    finally:
        for process in processes.values():
            process.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def cache(both: Both) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(both.redis_url)
    yield r
    r.close()


# ---------------------------------------------------------------- helpers
def ask(client: httpx.Client, both: Both, method: str, path: str, **kwargs: object) -> list[httpx.Response]:
    """The same request to the Python service, then to the Go version."""
    return [client.request(method, both.urls[side] + path, **kwargs) for side in SIDES]  # type: ignore[arg-type]


def assert_same(answers: list[httpx.Response], *, volatile: bool = False) -> None:
    py, go = answers
    assert py.status_code == go.status_code, (py.status_code, py.content, go.status_code, go.content)
    bodies = [VOLATILE.sub(rb'"\1":X', a.content) if volatile else a.content for a in answers]
    assert bodies[0] == bodies[1]
    assert headers(py) == headers(go)


def headers(answer: httpx.Response) -> dict[str, str | None]:
    """The headers that matter; Allow's methods as a set (Starlette lists them in a set's order,
    which changes with the process's hash seed)."""
    kept = {name: answer.headers.get(name) for name in HEADERS}
    if kept["allow"] is not None:
        kept["allow"] = ", ".join(sorted(kept["allow"].split(", ")))
    return kept


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}", "content-type": "application/json"}


def fill(path: str, both: Both) -> str:
    return path.format(card=both.cards[0], other=both.cards[1], trip=both.trip)


def cache_names(cache: redis.Redis, key: str) -> list[str]:
    """The key's name at epoch 0 and at any later epoch (e{N}:key)."""
    return [key, *(name.decode() if isinstance(name, bytes) else name for name in cache.keys(f"e*:{key}"))]


# ---------------------------------------------------------------- the two are two
def test_the_two_are_different_servers(client: httpx.Client, both: Both) -> None:
    """Without this, every 'same answer' below could be one server asked twice."""
    assert both.urls["python"] != both.urls["go"]
    py, go = ask(client, both, "GET", "/routes")
    assert (py.status_code, go.status_code) == (200, 404)
    assert both.processes["go"].process.args == [str(GO_BINARY)]


# ---------------------------------------------------------------- reads
READS = [
    "/health",
    "/users/count",
    "/users/active/count",
    "/trips/total",
    "/finance/revenue",
    "/cards/{card}/balance",
    "/cards/0{card}/balance",  # a leading zero: the same card, the same key
    "/trips/{trip}",
    "/cards/999999999/balance",  # 404 with the id
    "/trips/999999999",
    "/cards/0/balance",  # 422
    "/cards/abc/balance",
    "/cards/9223372036854775808/balance",
    "/trips/x",
    "/cards//balance",  # 404 NOT_FOUND
    "/trips/total/",
    "/nope",
]


@pytest.mark.parametrize("path", READS)
def test_reads_answer_the_same(client: httpx.Client, both: Both, cache: redis.Redis, path: str) -> None:
    path = fill(path, both)
    cold = []
    for side in SIDES:  # each from PostgreSQL: the cache emptied before each
        cache.flushdb()
        cold.append(client.get(both.urls[side] + path))
    assert_same(cold)
    assert_same(ask(client, both, "GET", path))  # then from the cache one of them filled


def test_reads_with_data_are_not_empty(client: httpx.Client, both: Both) -> None:
    """The reads compared above hold the module's data (not two empty answers alike)."""
    py, go = ask(client, both, "GET", f"/cards/{both.cards[0]}/balance")
    assert py.status_code == go.status_code == 200
    assert go.json()["card_id"] == both.cards[0] and go.json()["balance"] > 0
    assert client.get(both.urls["go"] + "/trips/total").json()["total_trips"] >= 1
    assert client.get(both.urls["go"] + "/users/count").json() == {"count": 1}


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/health"),
        ("DELETE", "/cards/1/balance"),
        ("GET", "/recharges"),
        ("PUT", "/trips"),
        ("POST", "/trips/5"),
        ("HEAD", "/trips/total"),
    ],
)
def test_methods_answer_the_same(client: httpx.Client, both: Both, method: str, path: str) -> None:
    assert_same(ask(client, both, method, path))


@pytest.mark.parametrize(
    "path,key",
    [
        ("/trips/total", "trips:total"),
        ("/finance/revenue", "finance:total_revenue"),
        ("/cards/{other}/balance", "card:{other}:balance"),
        ("/trips/{trip}", "trip:{trip}"),
    ],
)
@pytest.mark.parametrize("filler", SIDES)
def test_a_key_one_fills_the_other_reads(
    client: httpx.Client, both: Both, cache: redis.Redis, path: str, key: str, filler: str
) -> None:
    reader = "go" if filler == "python" else "python"
    path, key = fill(path, both), fill(key, both)
    cache.delete(*cache_names(cache, key))
    filled = client.get(both.urls[filler] + path)
    read = client.get(both.urls[reader] + path)
    assert filled.status_code == read.status_code == 200
    assert (filled.headers["x-cache"], read.headers["x-cache"]) == ("MISS", "HIT")
    assert filled.content == read.content
    assert any(cache.ttl(name) > 0 for name in cache_names(cache, key))


# ---------------------------------------------------------------- writes
BODIES = [
    b"",
    b"{",
    b"}",
    b'"x"',
    b"[]",
    b"null",
    b"{}",
    b'{"card_id":1}',
    b'{"card_id":"1","amount":5}',
    b'{"card_id":0,"amount":5}',
    b'{"card_id":1,"amount":0}',
    b'{"card_id":1,"amount":1000001}',
    b'{"card_id":1.0,"amount":5}',
    b'{"card_id":99999999999999999999,"amount":5}',
    b'{"card_id":1,"amount":5,"x":1}',
    b'{"x":1,"card_id":"a"}',
    b'{"card_id":null,"amount":5}',
    b'{"card_id":1,"amount":5,"recharge_point_id":"a"}',
    b'{"card_id":1,"amount":5,"recharge_point_id":2147483648}',
    b'{"card_id":1,"amount":5}x',
    b'{"card_id":1,"amount":5,}',
    b'{"card_id":1 "amount":5}',
    b"{card_id:1}",
    b'{"card_id":01,"amount":5}',
    b'{"card_id":1e400,"amount":5}',
    b'{"x":{"y":[0,1e400]}}',
    b'{"a\xff":1}',
    b'{"a\xe2\x82x":1}',
    b'{"card_id":"\\ud800","amount":5}',
    b'{"card_id":"\\x","amount":5}',
    b'{"card_id":"a\x01","amount":5}',
    b"[" * 2000,
]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("path,role,rename", [("/recharges", "admin", None), ("/trips", "validator", b'"route_id"')])
def test_bad_bodies_answer_the_same(
    client: httpx.Client, both: Both, body: bytes, path: str, role: str, rename: bytes | None
) -> None:
    if rename:
        body = body.replace(b'"amount"', rename)
    answers = ask(client, both, "POST", path, headers=bearer(role), content=body)
    assert answers[0].status_code in (400, 404, 422), answers[0].content  # bad input, refused
    assert_same(answers)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer nope"},
        {"content-type": "text/plain"},
        {"content-type": "application/json; charset=utf-8"},
    ],
)
def test_auth_and_media_type_answer_the_same(client: httpx.Client, both: Both, headers: dict[str, str]) -> None:
    if "content-type" in headers:
        merged = {**bearer("recharge_point"), **headers}
    else:
        merged = {"content-type": "application/json", **headers}
    answers = ask(client, both, "POST", "/recharges", headers=merged, content=b'{"card_id":1,"amount":1,"x":2}')
    assert answers[0].status_code >= 400
    assert_same(answers)


def test_roles_and_points_answer_the_same(client: httpx.Client, both: Both) -> None:
    card = both.cards[2]
    for path, role, body in [
        ("/trips", "recharge_point", {"card_id": card, "route_id": 1, "boarding_station_id": 1}),
        ("/recharges", "validator", {"card_id": card, "amount": 1}),
        ("/recharges", "recharge_point", {"card_id": card, "amount": 1, "recharge_point_id": 2}),
    ]:
        answers = ask(client, both, "POST", path, headers=bearer(role), json=body)
        assert answers[0].status_code == 403
        assert_same(answers)


@pytest.mark.parametrize("key", [b"", b"x" * 256, b"caf\xe9"])
def test_idempotency_keys_refused_the_same(client: httpx.Client, both: Both, key: bytes) -> None:
    headers = [*bearer("recharge_point").items(), ("idempotency-key", key)]
    body = b'{"card_id":%d,"amount":1}' % both.cards[2]
    answers = ask(client, both, "POST", "/recharges", headers=headers, content=body)
    assert answers[0].status_code in (400, 422)
    assert_same(answers)


@pytest.mark.parametrize(
    "path,body",
    [
        ("/recharges", {"card_id": 999999999, "amount": 1}),
        ("/recharges", {"card_id": "{card}", "amount": 1, "recharge_point_id": 999999}),
        ("/recharges", {"card_id": "{card}", "amount": 5_000_000}),  # past the balance cap
        ("/trips", {"card_id": 999999999, "route_id": 1, "boarding_station_id": 1}),
        ("/trips", {"card_id": "{card}", "route_id": 999999, "boarding_station_id": 1}),
        ("/trips", {"card_id": "{card}", "route_id": 1, "boarding_station_id": 999999}),
        ("/trips", {"card_id": "{card}", "route_id": 4, "boarding_station_id": 1}),  # a retired route
    ],
)
def test_refusals_of_the_database_answer_the_same(
    client: httpx.Client, both: Both, path: str, body: dict[str, object]
) -> None:
    body = {name: both.cards[2] if value == "{card}" else value for name, value in body.items()}
    answers = ask(client, both, "POST", path, headers=bearer("admin"), json=body)
    assert answers[0].status_code in (404, 409, 422), answers[0].content
    assert_same(answers)


@pytest.mark.parametrize("writer", SIDES)
def test_a_write_through_one_is_fresh_on_the_other(client: httpx.Client, both: Both, writer: str) -> None:
    reader = "go" if writer == "python" else "python"
    card = both.cards[1]
    balance = f"/cards/{card}/balance"
    client.get(both.urls[reader] + balance)
    before = client.get(both.urls[reader] + balance)
    assert before.headers["x-cache"] == "HIT"
    recharged = client.post(
        both.urls[writer] + "/recharges", headers=bearer("recharge_point"), json={"card_id": card, "amount": 700}
    )
    assert recharged.status_code == 201, recharged.text
    after = client.get(both.urls[reader] + balance)
    assert after.headers["x-cache"] == "MISS"
    assert after.json()["balance"] == before.json()["balance"] + 700 == recharged.json()["balance"]

    client.get(both.urls[reader] + "/trips/total")
    totals = client.get(both.urls[reader] + "/trips/total")
    assert totals.headers["x-cache"] == "HIT"
    boarded = client.post(
        both.urls[writer] + "/trips",
        headers=bearer("validator"),
        json={"card_id": card, "route_id": 1, "boarding_station_id": 1},
    )
    assert boarded.status_code == 201, boarded.text
    later = client.get(both.urls[reader] + "/trips/total")
    assert later.headers["x-cache"] == "MISS"
    assert later.json()["total_trips"] == totals.json()["total_trips"] + 1
    assert client.get(both.urls[reader] + balance).json()["balance"] == boarded.json()["balance"]
    trip = f"/trips/{boarded.json()['trip_id']}"
    ask(client, both, "GET", trip)  # the first of the two fills, the second hits
    answers = ask(client, both, "GET", trip)
    assert [a.headers["x-cache"] for a in answers] == ["HIT", "HIT"]
    assert_same(answers)


def test_write_answers_have_the_same_shape(client: httpx.Client, both: Both) -> None:
    card = both.cards[2]
    recharges = ask(
        client, both, "POST", "/recharges", headers=bearer("recharge_point"), json={"card_id": card, "amount": 5}
    )
    assert [a.status_code for a in recharges] == [201, 201]
    assert recharges[0].json()["recharge_id"] != recharges[1].json()["recharge_id"]
    assert recharges[1].json()["balance"] == recharges[0].json()["balance"] + 5
    assert_same(recharges, volatile=True)
    boardings = ask(
        client,
        both,
        "POST",
        "/trips",
        headers=bearer("validator"),
        json={"card_id": card, "route_id": 1, "boarding_station_id": 1},
    )
    assert [a.status_code for a in boardings] == [201, 201]
    assert boardings[0].json()["trip_id"] != boardings[1].json()["trip_id"]
    assert_same(boardings, volatile=True)


@pytest.mark.parametrize("first", SIDES)
def test_an_idempotency_key_one_stores_the_other_replays(client: httpx.Client, both: Both, first: str) -> None:
    headers = {**bearer("recharge_point"), "Idempotency-Key": str(uuid.uuid4())}
    body = {"card_id": both.cards[2], "amount": 11}
    stored = client.post(both.urls[first] + "/recharges", headers=headers, json=body)
    assert stored.status_code == 201 and "idempotent-replayed" not in stored.headers
    for replay in ask(client, both, "POST", "/recharges", headers=headers, json=body):
        assert replay.status_code == 201 and replay.content == stored.content
        assert replay.headers["idempotent-replayed"] == "true"
    # The same key with another body: refused alike.
    answers = ask(client, both, "POST", "/recharges", headers=headers, json={**body, "amount": 12})
    assert answers[0].status_code == 422
    assert_same(answers)


# ---------------------------------------------------------------- the SQL is sql/queries'
def test_the_go_version_reads_its_statements_from_sql_queries(
    go_binary: Path, both: Both, client: httpx.Client, tmp_path: Path
) -> None:
    """SQL_DIR names the directory; what its files say is what the Go version runs, and a
    statement missing there stops the start (no built-in copy to fall back on)."""
    queries = tmp_path / "queries"
    shutil.copytree(PROJECT_ROOT / "sql" / "queries", queries)
    (queries / "users-count.sql").write_text("-- name: users-count$\nSELECT 4242::bigint;\n")
    env = {"DATABASE_URL": both.database_url, "REDIS_URL": both.redis_url, "SQL_DIR": str(queries)}
    server = ServerProcess(env, command=[str(go_binary)], log_path=tmp_path / "go.log")
    try:
        server.wait_healthy()
        assert client.get(server.base_url + API + "/users/count").json() == {"count": 4242}
    finally:
        server.stop()

    (queries / "board-trip.sql").unlink()
    env["PORT"] = str(free_port())
    done = subprocess.run([str(go_binary)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "board-trip.sql" in done.stderr
