"""VM1's nginx (deploy/vm1-api/nginx.conf) in front of `python server.py` on a unix socket.

The shipped file runs with only its address, socket path and process-level lines swapped for
the test's: `nginx -t` accepts it, a request goes through nginx and the socket to the API, a
head over 16 KiB is refused by nginx itself, and the 65th request in progress from one address
is answered 429. The unit, install script and env.example agree on the socket."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.servers import API, NOT_INHERITED
from tests.support.stack import fresh_database
from travel.startup.embedded import EmbeddedStack
from travel.startup.processes import ServerProcess, free_port, stop_process

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parent.parent
VM1 = ROOT / "deploy" / "vm1-api"
SOCKET = "/run/travel-recharge-api/api.sock"
PER_ADDRESS = 64  # limit_conn per_address in nginx.conf


def nginx_program() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        pytest.fail("nginx is not installed: apt-get install -y nginx (.ci/system-packages does)", pytrace=False)
    return found


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the shipped nginx.conf changed: {old!r} is not there exactly once"
    return text.replace(old, new)


def nginx_config(port: int, socket: Path, work: Path) -> str:
    text = (VM1 / "nginx.conf").read_text()
    # As root the workers would become www-data, who cannot enter the test's private directory.
    text = replace_once(text, "user www-data;", "user root;" if os.geteuid() == 0 else "")
    text = replace_once(text, "pid /run/nginx.pid;", f"pid {work}/nginx.pid;")
    text = replace_once(text, "error_log /var/log/nginx/error.log warn;", f"error_log {work}/error.log warn;")
    text = replace_once(text, "listen 192.168.100.10:8000;", f"listen 127.0.0.1:{port};")
    text = replace_once(text, f"server unix:{SOCKET};", f"server unix:{socket};")
    temp_paths = "".join(
        f"    {name}_temp_path {work}/{name};\n" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return replace_once(text, "http {\n", "http {\n" + temp_paths)


@dataclass
class Vm1:
    url: str
    host: str
    port: int


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vm1")


@pytest.fixture(scope="module")
def nginx(work: Path) -> Iterator[int]:
    port = free_port()
    config = work / "nginx.conf"
    config.write_text(nginx_config(port, work / "api.sock", work))
    process = subprocess.Popen(
        [nginx_program(), "-c", str(config), "-e", str(work / "error.log"), "-g", "daemon off;"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield port
    finally:
        stop_process(process, timeout=15)


@pytest.fixture(scope="module")
async def vm1(stack: EmbeddedStack, template_url: str, nginx: int, work: Path) -> AsyncIterator[Vm1]:
    """nginx, and the API serving on the unix socket only."""
    database_url = await fresh_database(stack, "vm1")
    clean = {name: value for name, value in os.environ.items() if name not in NOT_INHERITED}
    env = {**clean, "DATABASE_URL": database_url, "REDIS_URL": stack.redis.url, "UNIX_SOCKET": str(work / "api.sock")}
    # The API has no TCP port: its health is asked through nginx.
    api = ServerProcess(
        env, log_path=work / "api.log", health_url=f"http://127.0.0.1:{nginx}{API}/health", inherit_env=False
    )
    try:
        api.wait_healthy()
        yield Vm1(f"http://127.0.0.1:{nginx}{API}", "127.0.0.1", nginx)
    finally:
        api.stop()


def test_nginx_accepts_the_shipped_configuration(tmp_path: Path) -> None:
    config = tmp_path / "nginx.conf"
    config.write_text(nginx_config(free_port(), tmp_path / "api.sock", tmp_path))
    checked = subprocess.run(
        [nginx_program(), "-t", "-c", str(config), "-e", str(tmp_path / "error.log")],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_unit_the_env_and_nginx_agree_on_the_socket() -> None:
    unit = (VM1 / "travel-recharge-api.service").read_text()
    env = (VM1 / "env.example").read_text()
    assert re.search(r"(?m)^RuntimeDirectory=travel-recharge-api$", unit)
    assert re.search(rf"(?m)^UNIX_SOCKET={re.escape(SOCKET)}$", env)
    assert f"server unix:{SOCKET};" in (VM1 / "nginx.conf").read_text()
    assert "nginx.conf" in (VM1 / "install.sh").read_text()


async def test_a_request_goes_through_nginx_and_the_unix_socket(vm1: Vm1, work: Path) -> None:
    assert (work / "api.sock").is_socket()
    async with httpx.AsyncClient(base_url=vm1.url, timeout=10) as http:
        health = await http.get("/health")
        assert health.status_code == 200 and health.json()["database"] == "ok"
        missing = await http.get("/cards/999999/balance")
        assert missing.status_code == 404 and missing.json()["code"] == "CARD_NOT_FOUND"
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(work / "api.sock")), timeout=10) as raw:
        assert (await raw.get("http://api/api/v1/health")).status_code == 200  # the API itself is on the socket


async def test_nginx_refuses_a_head_over_16_kib_itself(vm1: Vm1) -> None:
    async with httpx.AsyncClient(base_url=vm1.url, timeout=10) as http:
        assert (await http.get("/health", headers={"X-Pad": "a" * 15_000})).status_code == 200
        refused = await http.get("/health", headers={"X-Pad": "a" * 20_000})
        # nginx's own refusal (the API would have said 431 with problem+json)
        assert refused.status_code == 400 and "Header" in refused.text, refused.text[:300]


async def test_the_request_past_the_per_address_limit_is_429(vm1: Vm1) -> None:
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(PER_ADDRESS):
            reader, writer = await asyncio.open_connection(vm1.host, vm1.port)
            # nginx answers 100 Continue once it reads the body: past limit_conn, so counted.
            writer.write(
                b"POST /api/v1/recharges HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\nExpect: 100-continue\r\n\r\n"
            )
            assert (await asyncio.wait_for(reader.readline(), timeout=10)).startswith(b"HTTP/1.1 100 ")
            held.append((reader, writer))
        async with httpx.AsyncClient(base_url=vm1.url, timeout=10) as http:
            assert (await http.get("/health")).status_code == 429
    finally:
        for _reader, writer in held:  # half-close: nginx ends the request, then the connection
            writer.write_eof()
        for reader, writer in held:
            await asyncio.wait_for(reader.read(-1), timeout=15)
            writer.close()
    async with httpx.AsyncClient(base_url=vm1.url, timeout=10) as http:
        assert (await http.get("/health")).status_code == 200
