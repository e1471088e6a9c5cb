"""Two API instances behind one real load balancer (deploy/loadbalancer/), sharing Redis and PostgreSQL.

Two `python server.py` processes on free ports of 127.0.0.1 use this test's database and the
session's Redis; HAProxy and/or nginx (whichever is installed: CI installs `haproxy`) run the
shipped configuration, with only its addresses, ports and process-level lines swapped for the
test's. The test shows that

- a write through one instance invalidates what the other has cached (one Redis; the
  generation guard and the epochs are shared), so a read through A right after a recharge
  through B sees the new balance;
- the balancer alternates: both instances' request counters (/metrics) grow;
- with one instance stopped, the balancer keeps answering through the other, reads and writes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from tests.support.stack import TOKENS, register_test_tokens
from travel.startup.embedded import EmbeddedStack
from travel.startup.processes import ServerProcess, free_port

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parent.parent
LB_DIR = ROOT / "deploy" / "loadbalancer"
API = "/api/v1"
BALANCERS = [name for name in ("haproxy", "nginx") if shutil.which(name)]
ADMIN = {"Authorization": f"Bearer {TOKENS['admin']}"}


def test_a_load_balancer_is_installed() -> None:
    assert BALANCERS, "neither haproxy nor nginx is on PATH: apt-get install -y haproxy (CI installs it)"


# ---------------------------------------------------------------- the shipped configurations, localised
def haproxy_config(lb_port: int, api_ports: tuple[int, int]) -> str:
    text = (LB_DIR / "haproxy.cfg").read_text()
    # Process-level lines of `global` that need the packaged system (its user, chroot, syslog).
    text = re.sub(r"(?m)^\s*(log /dev/log|chroot|user|group|daemon|stats socket)\b.*\n", "", text)
    text = replace_once(text, "maxconn 20000", "maxconn 1000")  # 20000 needs LimitNOFILE of its systemd unit
    text = replace_once(text, "bind 192.168.100.5:80", f"bind 127.0.0.1:{lb_port}")
    text = replace_once(text, "192.168.100.10:8000", f"127.0.0.1:{api_ports[0]}")
    return replace_once(text, "192.168.100.11:8000", f"127.0.0.1:{api_ports[1]}")


def nginx_config(lb_port: int, api_ports: tuple[int, int], work: Path) -> str:
    text = (LB_DIR / "nginx.conf").read_text()
    text = re.sub(r"(?m)^user .*\n", "", text)
    text = replace_once(text, "pid /run/nginx.pid;", f"pid {work}/nginx.pid;")
    text = replace_once(text, "error_log /var/log/nginx/error.log warn;", f"error_log {work}/error.log warn;")
    text = replace_once(text, "listen 192.168.100.5:80;", f"listen 127.0.0.1:{lb_port};")
    text = replace_once(text, "192.168.100.10:8000", f"127.0.0.1:{api_ports[0]}")
    text = replace_once(text, "192.168.100.11:8000", f"127.0.0.1:{api_ports[1]}")
    temp_paths = "\n".join(
        f"    {name}_temp_path {work}/{name};" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return replace_once(text, "http {\n", "http {\n" + temp_paths + "\n")


def replace_once(text: str, old: str, new: str) -> str:
    """Replace `old` in the one directive (not comment) line holding it."""
    lines = text.splitlines(keepends=True)
    found = [n for n, line in enumerate(lines) if old in line and not line.lstrip().startswith("#")]
    if not found and old.endswith("\n"):  # a line of its own, as in "http {\n"
        found = [n for n, line in enumerate(lines) if line == old]
    assert len(found) == 1, f"the shipped configuration changed: {old!r} is not in exactly one directive"
    lines[found[0]] = lines[found[0]].replace(old, new)
    return "".join(lines)


def test_the_shipped_configurations_are_valid(tmp_path: Path) -> None:
    ports = (free_port(), free_port())
    if "haproxy" in BALANCERS:
        path = tmp_path / "haproxy.cfg"
        path.write_text(haproxy_config(free_port(), ports))
        checked = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    if "nginx" in BALANCERS:
        path = tmp_path / "nginx.conf"
        path.write_text(nginx_config(free_port(), ports, tmp_path))
        checked = subprocess.run(
            ["nginx", "-t", "-c", str(path), "-e", str(tmp_path / "error.log")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


# ---------------------------------------------------------------- processes
@pytest.fixture
async def instances(
    database_url: str, stack: EmbeddedStack, redis_client: aioredis.Redis, tmp_path: Path
) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    """Two `python server.py` on this test's database and the session's (emptied) Redis."""
    await register_test_tokens(database_url)
    started: list[ServerProcess] = []
    try:
        for name in ("api1", "api2"):
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "DATABASE_URL": database_url,
                "REDIS_URL": stack.redis.url,
                "HOST": "127.0.0.1",
                "WORKERS": "1",
                "LOG_LEVEL": "warning",
                "POOL_MIN": "1",
                "POOL_MAX": "8",
            }
            started.append(ServerProcess(env, log_path=tmp_path / f"{name}.log", inherit_env=False))
        for process in started:
            process.wait_healthy()
        yield started[0], started[1]
    finally:
        for process in started:
            process.stop()


def start_balancer(kind: str, api_ports: tuple[int, int], work: Path) -> ServerProcess:
    """HAProxy or nginx on a free port in front of the two instances; healthy when /health
    answers through it."""
    port = free_port()
    if kind == "haproxy":
        config = work / "haproxy.cfg"
        config.write_text(haproxy_config(port, api_ports))
        command = ["haproxy", "-db", "-f", str(config)]
    else:
        config = work / "nginx.conf"
        config.write_text(nginx_config(port, api_ports, work))
        command = ["nginx", "-c", str(config), "-e", str(work / "error.log"), "-g", "daemon off;"]
    return ServerProcess({}, command=command, port=port, log_path=work / f"{kind}.log")


@pytest.fixture(params=BALANCERS or ["none"])
def balancer_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "none":
        pytest.fail("neither haproxy nor nginx is on PATH: apt-get install -y haproxy", pytrace=False)
    return str(request.param)


def requests_served(metrics: str, route: str) -> float:
    """travel_requests_total summed over methods and statuses, for one route template."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("travel_requests_total{") and f'route="{route}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---------------------------------------------------------------- the test
async def test_two_instances_behind_a_load_balancer(
    balancer_kind: str, instances: tuple[ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    a, b = instances
    lb = start_balancer(balancer_kind, (a.port, b.port), tmp_path)
    try:
        lb.wait_healthy()
        async with httpx.AsyncClient(timeout=10) as http:
            # Set-up through the balancer.
            user = await http.post(
                lb.base_url + API + "/users",
                headers=ADMIN,
                json={
                    "first_name": "Lb",
                    "last_name": "User",
                    "email": f"lb-{balancer_kind}@two.example",
                    "id_number": f"LB-{balancer_kind}",
                },
            )
            assert user.status_code == 201, user.text
            card = await http.post(
                lb.base_url + API + "/cards", headers=ADMIN, json={"user_id": user.json()["user_id"]}
            )
            assert card.status_code == 201, card.text
            card_id = card.json()["card_id"]
            balance_path = f"{API}/cards/{card_id}/balance"
            assert (
                await http.post(
                    a.base_url + API + "/recharges", headers=ADMIN, json={"card_id": card_id, "amount": 5000}
                )
            ).status_code == 201

            # Cached in Redis through A ...
            first, second = await http.get(a.base_url + balance_path), await http.get(a.base_url + balance_path)
            assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
            assert second.json()["balance"] == 5000
            # ... a recharge through B ...
            recharged = await http.post(
                b.base_url + API + "/recharges", headers=ADMIN, json={"card_id": card_id, "amount": 1000}
            )
            assert recharged.status_code == 201, recharged.text
            # ... and A reads the new balance at once.
            after = await http.get(a.base_url + balance_path)
            assert after.status_code == 200 and after.json()["balance"] == 6000
            assert after.headers["x-cache"] == "MISS"
            assert (await http.get(a.base_url + balance_path)).headers["x-cache"] == "HIT"

            # The balancer alternates between the two instances.
            route = "/api/v1/cards/{card_id}/balance"
            before = [requests_served((await http.get(p.base_url + "/metrics")).text, route) for p in (a, b)]
            for _ in range(20):
                answer = await http.get(lb.base_url + balance_path)
                assert answer.status_code == 200 and answer.json()["balance"] == 6000
            grown = [
                requests_served((await http.get(p.base_url + "/metrics")).text, route) - was
                for p, was in zip((a, b), before, strict=False)
            ]
            assert sum(grown) == 20 and min(grown) >= 5, f"requests per instance: {grown}"

            # One instance stops: the balancer keeps answering through the other.
            b.stop()
            started = time.monotonic()
            for n in range(20):
                answer = await http.get(lb.base_url + balance_path)
                assert answer.status_code == 200, (n, answer.status_code, answer.text)
            written = await http.post(
                lb.base_url + API + "/recharges", headers=ADMIN, json={"card_id": card_id, "amount": 500}
            )
            assert written.status_code == 201, written.text
            final = await http.get(lb.base_url + balance_path)
            assert final.status_code == 200 and final.json()["balance"] == 6500
            assert time.monotonic() - started < 10
    finally:
        if lb.stop() not in (0, -signal.SIGTERM, 143):
            print(lb.printed(last_lines=40))
