"""`python server.py` as a user runs it: a real process, signals, the embedded default."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from conftest import TOKENS, register_test_tokens

from travel.startup.embedded import EmbeddedStack
from travel.startup.processes import free_port

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """`python server.py` with the given environment, and its output."""

    def __init__(self, **env: str) -> None:
        self.port = free_port()
        clean = {
            name: value
            for name, value in os.environ.items()
            if name not in ("DATABASE_URL", "REDIS_URL", "DEMO_SCALE", "ADMIN_TOKEN")
        }
        # A file, not a pipe: a server that logs more than a pipe holds must not block on it.
        self.output = tempfile.TemporaryFile("w+")  # lives as long as the server
        self.process = subprocess.Popen(
            [sys.executable, "server.py"],
            cwd=ROOT,
            env={**clean, "PORT": str(self.port), **env},
            stdout=self.output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.url = f"http://127.0.0.1:{self.port}/api/v1"

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.printed()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)  # polling a port that is not open yet; nothing to wait on instead
        raise AssertionError("server not healthy in time")

    def stop(self) -> tuple[int, str]:
        """SIGTERM, as systemd stops it; return the exit status and everything it printed."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30), self.printed()

    def printed(self) -> str:
        self.output.seek(0)
        return self.output.read()


@pytest.fixture
def run_server() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


@pytest.fixture
async def served(database_url: str, stack: EmbeddedStack, run_server: list[ServerProcess]) -> ServerProcess:
    """`python server.py` on this test's database and the session's Redis, healthy, with the test tokens."""
    await register_test_tokens(database_url)
    server = ServerProcess(DATABASE_URL=database_url, REDIS_URL=stack.redis.url)
    run_server.append(server)
    server.wait_healthy()
    return server


async def test_server_serves_given_databases_and_stops_cleanly_on_sigterm(served: ServerProcess) -> None:
    server = served
    admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
    with httpx.Client(base_url=server.url, headers=admin) as http:
        user = http.post(
            "/users",
            json={"first_name": "Ana", "last_name": "Díaz", "email": "ana.diaz@example.co", "id_number": "1020304050"},
        )
        assert user.status_code == 201
        assert http.get("/users/count").json() == {"count": 1}

    status, output = server.stop()
    assert status == 0, output
    assert "Traceback" not in output


def live_processes_mentioning(text: str) -> list[str]:
    """Command lines of live (not zombie) processes that mention `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(cmdline)
    return found


def start_embedded(data_dir: Path, run_server: list[ServerProcess]) -> ServerProcess:
    """`python server.py` on the embedded default in `data_dir` (no demo data), healthy."""
    server = ServerProcess(DATA_DIR=str(data_dir), DEMO_SCALE="0")
    run_server.append(server)
    server.wait_healthy()
    return server


def test_embedded_default_starts_keeps_its_data_and_stops_its_servers(
    tmp_path: Path, run_server: list[ServerProcess]
) -> None:
    data_dir = tmp_path / "data"
    first = start_embedded(data_dir, run_server)
    token = (data_dir / "admin.token").read_text().strip()
    with httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {token}"}) as http:
        assert (
            http.post(
                "/users",
                json={"first_name": "Juan", "last_name": "Mora", "email": "juan@example.co", "id_number": "7012345"},
            ).status_code
            == 201
        )
    status, output = first.stop()
    assert status == 0, output
    assert f"demo admin token: {token}" in output
    assert live_processes_mentioning(str(data_dir)) == []

    second = start_embedded(data_dir, run_server)
    latest = httpx.get(second.url + "/users/latest", headers={"Authorization": f"Bearer {token}"})
    assert latest.json()[0]["email"] == "juan@example.co"
    status, output = second.stop()
    assert status == 0, output
    assert live_processes_mentioning(str(data_dir)) == []


def test_a_second_run_on_the_same_data_says_which_process_holds_it(
    tmp_path: Path, run_server: list[ServerProcess]
) -> None:
    data_dir = tmp_path / "data"
    first = start_embedded(data_dir, run_server)
    second = ServerProcess(DATA_DIR=str(data_dir), DEMO_SCALE="0")
    assert second.process.wait(timeout=60) != 0
    output = second.printed()
    pid = int((data_dir / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
    assert f"another `make run` is using {data_dir} (PostgreSQL pid {pid})" in output, output
    assert "Traceback" not in output and "serving on" not in output
    assert httpx.get(first.url + "/health").status_code == 200  # the first run was left alone
    status, _ = first.stop()
    assert status == 0


@pytest.mark.parametrize(
    ("port", "message"),
    [("99999", "PORT=99999: expected a TCP port, 1..65535"), ("abc", "PORT='abc': expected a whole number")],
)
def test_a_bad_setting_is_one_clear_line(port: str, message: str) -> None:
    server = ServerProcess(PORT=port, DATABASE_URL="postgresql://unused", REDIS_URL="redis://unused")
    assert server.process.wait(timeout=30) != 0
    assert server.printed().strip() == f"configuration: {message}"


async def test_a_busy_port_fails_before_announcing_it_serves(
    database_url: str, stack: EmbeddedStack, run_server: list[ServerProcess]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        server = ServerProcess(DATABASE_URL=database_url, REDIS_URL=stack.redis.url, PORT=busy)
        run_server.append(server)
        assert server.process.wait(timeout=60) != 0
    output = server.printed()
    assert "address already in use" in output.lower(), output
    assert f"cannot listen on 127.0.0.1:{busy} (the line above says why)" in output
    assert "serving on" not in output and "Traceback" not in output


async def test_sigterm_lets_an_in_flight_recharge_finish_and_be_answered(
    served: ServerProcess, database_url: str
) -> None:
    server = served
    admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
    async with httpx.AsyncClient(base_url=server.url, headers=admin, timeout=30) as http:
        user = await http.post(
            "/users", json={"first_name": "Eva", "last_name": "Ruiz", "email": "eva@example.co", "id_number": "3012345"}
        )
        card = (await http.post("/cards", json={"user_id": user.json()["user_id"]})).json()

        holder = await asyncpg.connect(database_url)
        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT FROM cards WHERE card_id = $1 FOR UPDATE", card["card_id"])
        in_flight = asyncio.ensure_future(http.post("/recharges", json={"card_id": card["card_id"], "amount": 900}))
        waiting_on_lock = (
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        deadline = time.monotonic() + 10
        while await holder.fetchval(waiting_on_lock) == 0:  # the recharge is inside its function, blocked
            assert time.monotonic() < deadline
        server.process.send_signal(signal.SIGTERM)
        while port_open(server.port):  # uvicorn stops accepting first...
            assert time.monotonic() < deadline
        await lock.rollback()  # ...then the recharge may finish
        answer = await in_flight
        await holder.close()

    assert (answer.status_code, answer.json()["balance"]) == (201, 900)
    assert server.process.wait(timeout=15) == 0


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "20"))


async def test_saturation_soak_answers_only_200_or_overloaded_with_flat_memory(
    database_url: str, stack: EmbeddedStack, run_server: list[ServerProcess]
) -> None:
    """More clients than the pool and its waiting bound: the excess is refused at once with
    503 OVERLOADED, nothing else goes wrong, and the worker's memory stays flat."""
    server = ServerProcess(
        DATABASE_URL=database_url,
        REDIS_URL=stack.redis.url,
        POOL_MIN="2",
        POOL_MAX="2",
        MAX_WAITING="6",
        LOG_LEVEL="error",
    )
    run_server.append(server)
    server.wait_healthy()
    statuses: dict[tuple[int, str], int] = {}
    memory: list[int] = []
    stop_at = time.monotonic() + SOAK_SECONDS

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < stop_at:
            response = await http.get("/users/count")
            outcome = (response.status_code, response.json().get("code", "") if response.status_code != 200 else "")
            statuses[outcome] = statuses.get(outcome, 0) + 1

    async def sample_memory() -> None:
        while time.monotonic() < stop_at:
            memory.append(rss_kib(server.process.pid))
            await asyncio.sleep(1)  # a sampling period, not a synchronisation

    limits = httpx.Limits(max_connections=48)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=10) as http:
        await asyncio.gather(sample_memory(), *(client(http) for _ in range(48)))
    status, output = server.stop()

    assert status == 0, output
    assert set(statuses) <= {(200, ""), (503, "OVERLOADED")}, statuses
    assert statuses.get((503, "OVERLOADED"), 0) > 0 and statuses.get((200, ""), 0) > 0, statuses
    settled = memory[len(memory) // 4]  # after warm-up
    assert memory[-1] - settled < 8 * 1024, memory  # KiB: flat, not growing with requests
    print(f"soak {SOAK_SECONDS:.0f} s: {statuses}, RSS {settled} -> {memory[-1]} KiB")
