"""The API through a real PgBouncer in transaction mode (docs/design.md: shape, issue 6).

asyncpg prepares every statement (named, protocol-level) and caches it per connection. In
transaction mode consecutive transactions of one client run on different server
connections, which do not know those names: PgBouncer >= 1.21 with `max_prepared_statements`
tracks them and prepares them again on whichever server connection runs them. The pool here
is kept small (3 server connections for up to 20 API connections), so statements keep
meeting server connections that have not seen them.

The binary: $PGBOUNCER, else `pgbouncer` on PATH or in /usr/sbin (Debian's package). Older
than 1.21 (Debian 12 ships 1.18), or missing, the tests fail and say so:
deploy/pgbouncer/install-pgbouncer.sh installs one that is recent enough.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.support.api import json_body, make_user_with_card, recharge
from tests.support.polling import eventually_async
from tests.support.stack import serve_api
from travel import database
from travel.startup.embedded import EmbeddedStack, Unprivileged
from travel.startup.processes import eventually, free_port, stop_process

pytestmark = pytest.mark.root

MIN_VERSION = (1, 21)
SERVER_CONNECTIONS = 3


def pgbouncer_binary() -> tuple[str | None, str]:
    """The binary to test and its version, or None and why not."""
    candidates = [
        os.environ.get("PGBOUNCER"),
        "/usr/local/bin/pgbouncer",
        shutil.which("pgbouncer"),
        "/usr/sbin/pgbouncer",
    ]
    found = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if found is None:
        return None, "no pgbouncer (deploy/pgbouncer/install-pgbouncer.sh installs one)"
    out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"PgBouncer (\d+)\.(\d+)", out)
    if match is None or (int(match[1]), int(match[2])) < MIN_VERSION:
        return None, (
            f"{found} is {out.splitlines()[0] if out else '?'}: max_prepared_statements needs "
            ">= 1.21 (deploy/pgbouncer/install-pgbouncer.sh installs one)"
        )
    return found, out.splitlines()[0]


BINARY, VERSION = pgbouncer_binary()


@pytest.fixture(autouse=True)
def pgbouncer_installed() -> None:
    """Fail, never skip, without a recent PgBouncer (make test installs one: .ci/system-packages)."""
    if BINARY is None:
        pytest.fail(VERSION)


@dataclass
class PgBouncer:
    binary: str
    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self, postgres_port: int, user: str, scram_secret: str) -> None:
        as_ = Unprivileged.for_this_process()  # PgBouncer, like PostgreSQL, will not run as root
        self.root.mkdir(parents=True, exist_ok=True)
        auth_file = self.root / "userlist.txt"
        auth_file.write_text(f'"{user}" "{scram_secret}"\n')
        config = self.root / "pgbouncer.ini"
        config.write_text(f"""\
[databases]
* = host=127.0.0.1 port={postgres_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {auth_file}
pool_mode = transaction
max_prepared_statements = 200
default_pool_size = {SERVER_CONNECTIONS}
max_client_conn = 500
; asyncpg sends jit=off at connect; PgBouncer cannot pass it on per client (set it with
; ALTER ROLE ... SET jit = off on the server instead).
ignore_startup_parameters = jit
server_reset_query =
logfile = {self.root / "pgbouncer.log"}
pidfile =
""")
        for path in (self.root, auth_file, config):
            as_.hand_over(path)
        self.process = subprocess.Popen(
            [*as_.prefix, self.binary, str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **(as_.popen_kwargs() if hasattr(as_, "popen_kwargs") else {}),
        )
        eventually(self.listening, 15, "pgbouncer listens", every=0.02)

    def listening(self) -> bool:
        assert self.process is not None and self.process.poll() is None, f"pgbouncer exited: {self.log()}"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:  # not yet
            return False

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@pytest.fixture(scope="module")
async def bouncer(stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PgBouncer]:
    assert BINARY is not None
    admin = await asyncpg.connect(stack.postgres.url)
    try:
        secret = await admin.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = 'travel'")
    finally:
        await admin.close()
    assert secret.startswith("SCRAM-SHA-256$")  # the auth file holds the secret, not the password
    running = PgBouncer(BINARY, tmp_path_factory.mktemp("pgbouncer"), free_port())
    running.start(stack.postgres.port, "travel", secret)
    try:
        yield running
    finally:
        running.stop()


def through(bouncer: PgBouncer, database_url: str) -> str:
    """`database_url` with PgBouncer's port instead of PostgreSQL's."""
    return re.sub(r"@127\.0\.0\.1:\d+/", f"@127.0.0.1:{bouncer.port}/", database_url)


async def server_connections(database_url: str) -> int:
    """PostgreSQL backends of this database that are not ours (PgBouncer's)."""
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()


async def test_explicit_prepared_statements_cross_server_connections(bouncer: PgBouncer, database_url: str) -> None:
    """Named statements from conn.prepare() (which asyncpg makes even with its cache off),
    prepared on one server connection and run later on others. Note: asyncpg's prepare()
    ends with Flush, not Sync, so the client keeps its server connection until it first
    runs the statement: prepare and run it in one go (or in one transaction)."""
    url = through(bouncer, database_url)
    clients = [await asyncpg.connect(url, statement_cache_size=size) for size in (0, 100) * 4]
    try:

        async def use(client: asyncpg.Connection) -> list[int]:
            async with client.transaction():
                statement = await client.prepare("SELECT $1::int + count(*)::int FROM stations")
                results = [await statement.fetchval(0)]
            for round_ in range(1, 10):
                async with client.transaction():
                    results.append(await statement.fetchval(round_))
                    await asyncio.sleep(0.001)  # hold the server connection a little
            return results

        answers = await asyncio.gather(*(use(client) for client in clients))
        assert all(answer == [round_ + 4 for round_ in range(10)] for answer in answers)
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    assert await server_connections(database_url) <= SERVER_CONNECTIONS


async def test_concurrent_writes_and_reads_through_transaction_pooling(
    bouncer: PgBouncer, database_url: str, stack: EmbeddedStack, redis_client
) -> None:
    # More client connections than PgBouncer has server connections from the start: how far a
    # pool grows under load depends on timing (group commit and single-flight share connections).
    async with serve_api(through(bouncer, database_url), stack.redis.url, pool_min=2 * SERVER_CONNECTIONS) as api:
        cards = [(await make_user_with_card(api))[1]["card_id"] for _ in range(4)]
        amounts = [1_000 + 100 * i for i in range(32)]

        async def write(i: int) -> int:
            response = await recharge(api, cards[i % len(cards)], amounts[i])
            json_body(response, 201)
            return response.status_code

        async def total() -> int:
            return (await api.http.get("/trips/total")).status_code

        async def read(i: int) -> int:
            response = await api.http.get(f"/cards/{cards[i % len(cards)]}/balance")
            json_body(response)
            return response.status_code

        statuses = await asyncio.gather(
            *(write(i) for i in range(32)),
            *(read(i) for i in range(32)),
            *(total() for _ in range(8)),
        )
        assert all(200 <= status < 300 for status in statuses)
        # Many client connections, few server connections: statements met strangers.
        assert api.state["db"].pool.get_size() > SERVER_CONNECTIONS
        assert await server_connections(database_url) <= SERVER_CONNECTIONS

        for index, card in enumerate(cards):
            expected = sum(amounts[i] for i in range(32) if i % len(cards) == index)
            assert json_body(await api.http.get(f"/cards/{card}/balance"))["balance"] == expected
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT card_id, balance FROM cards WHERE card_id = ANY($1)", cards)
            recharged = await conn.fetchval("SELECT count(*) FROM recharges WHERE card_id = ANY($1)", cards)
        finally:
            await conn.close()
        assert recharged == 32
        assert {row["card_id"]: row["balance"] for row in rows} == {
            card: sum(amounts[i] for i in range(32) if i % len(cards) == index) for index, card in enumerate(cards)
        }


async def test_cache_epoch_notifications_bypass_transaction_pooling(
    bouncer: PgBouncer, database_url: str, stack: EmbeddedStack, redis_client
) -> None:
    """Another instance's epoch bump (NOTIFY cache_epoch) must reach this instance's LISTEN.

    LISTEN cannot work through transaction pooling: the server connection that ran it goes
    back to the pool, and PgBouncer drops the notification ("got packet 'A' from server when
    not linked"). The listener needs a direct (or session-pooled) connection:
    `listen_database_url` (LISTEN_DATABASE_URL).
    """
    async with serve_api(
        through(bouncer, database_url), stack.redis.url, listen_database_url=database_url
    ) as api:  # LISTEN straight to PostgreSQL
        await asyncio.wait_for(api.state["listener"].connected.wait(), 5)
        cache = api.state["cache"]
        before = cache.epoch
        conn = await asyncpg.connect(database_url)
        try:
            bumped = await database.QUERIES["bump-cache-epoch"](conn)
        finally:
            await conn.close()
        await eventually_async(lambda: cache.epoch >= bumped, 3, "the epoch heard by LISTEN", every=0.02)
        assert cache.epoch == bumped > before
