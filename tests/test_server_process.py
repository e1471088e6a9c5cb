"""`python server.py` as a user runs it: a real process, signals, the embedded default."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import TOKENS, register_test_tokens
from localstack import LocalStack, free_port

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """`python server.py` with the given environment, and its output."""

    def __init__(self, **env: str) -> None:
        self.port = free_port()
        clean = {name: value for name, value in os.environ.items()
                 if name not in ("DATABASE_URL", "REDIS_URL", "DEMO_SCALE", "ADMIN_TOKEN")}
        self.process = subprocess.Popen(
            [sys.executable, "server.py"], cwd=ROOT, env={**clean, "PORT": str(self.port), **env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{self.port}/api/v1"

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.process.stdout.read()}")  # type: ignore[union-attr]
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
        output, _ = self.process.communicate(timeout=30)
        return self.process.returncode, output


@pytest.fixture
def run_server() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


async def test_server_serves_given_databases_and_stops_cleanly_on_sigterm(
        database_url: str, stack: LocalStack, run_server: list[ServerProcess]) -> None:
    await register_test_tokens(database_url)
    server = ServerProcess(DATABASE_URL=database_url, REDIS_URL=stack.redis.url)
    run_server.append(server)
    server.wait_healthy()
    admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
    with httpx.Client(base_url=server.url, headers=admin) as http:
        user = http.post("/users", json={"first_name": "Ana", "last_name": "Díaz",
                                         "email": "ana.diaz@example.co", "id_number": "1020304050"})
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


def test_embedded_default_starts_keeps_its_data_and_stops_its_servers(
        tmp_path: Path, run_server: list[ServerProcess]) -> None:
    data_dir = tmp_path / "data"
    first = ServerProcess(DATA_DIR=str(data_dir), DEMO_SCALE="0")
    run_server.append(first)
    first.wait_healthy()
    token = (data_dir / "admin.token").read_text().strip()
    with httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {token}"}) as http:
        assert http.post("/users", json={"first_name": "Juan", "last_name": "Mora",
                                         "email": "juan@example.co", "id_number": "7012345"}).status_code == 201
    status, output = first.stop()
    assert status == 0, output
    assert f"demo admin token: {token}" in output
    assert live_processes_mentioning(str(data_dir)) == []

    second = ServerProcess(DATA_DIR=str(data_dir), DEMO_SCALE="0")
    run_server.append(second)
    second.wait_healthy()
    assert httpx.get(second.url + "/users/latest").json()[0]["email"] == "juan@example.co"
    status, output = second.stop()
    assert status == 0, output
    assert live_processes_mentioning(str(data_dir)) == []
