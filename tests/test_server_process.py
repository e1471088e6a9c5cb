"""`python server.py` as a user runs it: a real process, signals, the embedded default."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.support.db import until_a_session_waits_on_a_lock
from tests.support.servers import StartServer, api_url
from tests.support.stack import TOKENS
from travel.startup.embedded import EmbeddedStack
from travel.startup.processes import ServerProcess, eventually

pytestmark = pytest.mark.slow  # each test starts `python server.py`


async def test_server_serves_given_databases_and_stops_cleanly_on_sigterm(served: ServerProcess) -> None:
    server = served
    admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
    with httpx.Client(base_url=api_url(server), headers=admin) as http:
        user = http.post(
            "/users",
            json={"first_name": "Ana", "last_name": "Díaz", "email": "ana.diaz@example.co", "id_number": "1020304050"},
        )
        assert user.status_code == 201
        assert http.get("/users/count").json() == {"count": 1}

    status, output = server.stop(), server.printed()
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


def runs(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_embedded(data_dir: Path, run_server: StartServer) -> ServerProcess:
    """`python server.py` on the embedded default in `data_dir` (no demo data), healthy."""
    server = run_server(DATA_DIR=str(data_dir), DEMO_SCALE="0")
    server.wait_healthy()
    return server


def test_embedded_default_starts_keeps_its_data_and_stops_its_servers(tmp_path: Path, run_server: StartServer) -> None:
    data_dir = tmp_path / "data"
    first = start_embedded(data_dir, run_server)
    token = (data_dir / "admin.token").read_text().strip()
    with httpx.Client(base_url=api_url(first), headers={"Authorization": f"Bearer {token}"}) as http:
        assert (
            http.post(
                "/users",
                json={"first_name": "Juan", "last_name": "Mora", "email": "juan@example.co", "id_number": "7012345"},
            ).status_code
            == 201
        )
    status, output = first.stop(), first.printed()
    assert status == 0, output
    assert f"demo admin token: {token}" in output
    assert live_processes_mentioning(str(data_dir)) == []

    second = start_embedded(data_dir, run_server)
    latest = httpx.get(api_url(second) + "/users/latest", headers={"Authorization": f"Bearer {token}"})
    assert latest.json()[0]["email"] == "juan@example.co"
    status, output = second.stop(), second.printed()
    assert status == 0, output
    assert live_processes_mentioning(str(data_dir)) == []


def test_a_second_run_on_the_same_data_says_which_process_holds_it(tmp_path: Path, run_server: StartServer) -> None:
    data_dir = tmp_path / "data"
    first = start_embedded(data_dir, run_server)
    second = run_server(DATA_DIR=str(data_dir), DEMO_SCALE="0")
    assert second.process.wait(timeout=60) != 0
    output = second.printed()
    pid = int((data_dir / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
    assert f"another `make run` is using {data_dir} (PostgreSQL pid {pid})" in output, output
    assert "Traceback" not in output and "serving on" not in output
    assert httpx.get(api_url(first) + "/health").status_code == 200  # the first run was left alone
    status = first.stop()
    assert status == 0


@pytest.mark.parametrize(
    ("port", "message"),
    [("99999", "PORT=99999: expected a TCP port, 1..65535"), ("abc", "PORT='abc': expected a whole number")],
)
def test_a_bad_setting_is_one_clear_line(port: str, message: str, run_server: StartServer) -> None:
    server = run_server(PORT=port, DATABASE_URL="postgresql://unused", REDIS_URL="redis://unused")
    assert server.process.wait(timeout=30) != 0
    assert server.printed().strip() == f"configuration: {message}"


async def test_a_busy_port_fails_before_announcing_it_serves(
    database_url: str, stack: EmbeddedStack, run_server: StartServer
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        server = run_server(DATABASE_URL=database_url, REDIS_URL=stack.redis.url, PORT=busy)
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
    async with httpx.AsyncClient(base_url=api_url(server), headers=admin, timeout=30) as http:
        user = await http.post(
            "/users", json={"first_name": "Eva", "last_name": "Ruiz", "email": "eva@example.co", "id_number": "3012345"}
        )
        card = (await http.post("/cards", json={"user_id": user.json()["user_id"]})).json()

        holder = await asyncpg.connect(database_url)
        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT FROM cards WHERE card_id = $1 FOR UPDATE", card["card_id"])
        in_flight = asyncio.ensure_future(http.post("/recharges", json={"card_id": card["card_id"], "amount": 900}))
        await until_a_session_waits_on_a_lock(holder, "the recharge waits on the card's lock")
        server.process.send_signal(signal.SIGTERM)
        eventually(lambda: not port_open(server.port), 10, "uvicorn stops accepting")  # first...
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
    database_url: str, stack: EmbeddedStack, run_server: StartServer
) -> None:
    """More clients than the pool and its waiting bound: the excess is refused at once with
    503 OVERLOADED, nothing else goes wrong, and the worker's memory stays flat."""
    server = run_server(
        DATABASE_URL=database_url,
        REDIS_URL=stack.redis.url,
        POOL_MIN="2",
        POOL_MAX="2",
        MAX_WAITING="0",  # 48 clients in one process seldom have many requests in flight at once
        LOG_LEVEL="error",
    )
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
    async with httpx.AsyncClient(base_url=api_url(server), limits=limits, timeout=10) as http:
        await asyncio.gather(sample_memory(), *(client(http) for _ in range(48)))
    status, output = server.stop(), server.printed()

    assert status == 0, output
    assert set(statuses) <= {(200, ""), (503, "OVERLOADED")}, statuses
    assert statuses.get((503, "OVERLOADED"), 0) > 0 and statuses.get((200, ""), 0) > 0, statuses
    settled = memory[len(memory) // 4]  # after warm-up
    assert memory[-1] - settled < 8 * 1024, memory  # KiB: flat, not growing with requests
    print(f"soak {SOAK_SECONDS:.0f} s: {statuses}, RSS {settled} -> {memory[-1]} KiB")


def test_a_start_after_its_api_was_killed_stops_the_servers_left_running_then_starts(
    tmp_path: Path, run_server: StartServer
) -> None:
    """Before issue 20: "another `make run` is using .data", and the orphans ran on."""
    data_dir = tmp_path / "data"
    first = start_embedded(data_dir, run_server)
    postgres_pid = int((data_dir / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
    (redis_pid_file,) = (data_dir / "redis").glob("server-*.pid")
    redis_pid = int(redis_pid_file.read_text())
    first.process.kill()  # SIGKILL: nothing of it runs its clean-up
    first.process.wait(timeout=10)
    assert runs(postgres_pid) and runs(redis_pid)  # orphaned

    second = start_embedded(data_dir, run_server)
    output = second.printed()
    assert f"stopping PostgreSQL (pid {postgres_pid})" in output, output
    assert f"stopping Redis (pid {redis_pid})" in output, output
    assert not runs(postgres_pid) and not runs(redis_pid)
    assert second.stop() == 0
    assert live_processes_mentioning(str(data_dir)) == []


def test_sigterm_after_postgresql_died_exits_cleanly_with_one_line(tmp_path: Path, run_server: StartServer) -> None:
    data_dir = tmp_path / "data"
    server = start_embedded(data_dir, run_server)
    os.kill(int((data_dir / "postgres" / "data" / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)
    time.sleep(0.5)
    assert server.stop() == 0, server.printed()
    # Beside the log's JSON records (the pool's reconnection warnings among them): one line.
    plain = [line for line in server.printed().splitlines() if not line.startswith("{")]
    assert plain[-1] == "PostgreSQL had already stopped; its next start recovers its data", plain
    assert not any("Traceback" in line for line in plain), plain
    assert live_processes_mentioning(str(data_dir)) == []


async def test_a_database_url_means_the_embedded_postgresql_is_not_looked_at(
    tmp_path: Path, run_server: StartServer, database_url: str
) -> None:
    """With DATABASE_URL given, a `make run` holding DATA_DIR's PostgreSQL is no obstacle."""
    data_dir = tmp_path / "data"
    first = start_embedded(data_dir, run_server)
    second = run_server(DATA_DIR=str(data_dir), DATABASE_URL=database_url)  # Redis still embedded
    second.wait_healthy()
    assert "another `make run`" not in second.printed()
    assert "demo admin token" not in second.printed()
    assert second.stop() == 0 and first.stop() == 0


def test_the_banner_comes_only_once_the_service_answers(run_server: StartServer, tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        unreachable = f"postgresql://travel:x@127.0.0.1:{closed.getsockname()[1]}/travel"
    failing = run_server(DATABASE_URL=unreachable, REDIS_URL="redis://127.0.0.1:1/0")
    assert failing.process.wait(timeout=60) != 0
    output = failing.printed()
    assert "cannot connect to PostgreSQL" in output, output
    assert "serving on" not in output and "Uvicorn running on" not in output, output
    started = start_embedded(tmp_path / "data", run_server)
    eventually(lambda: "serving on" in started.printed(), 10, "the banner")
    assert "Uvicorn running on" not in started.printed()
    assert started.stop() == 0
