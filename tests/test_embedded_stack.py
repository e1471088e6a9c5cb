"""The embedded stack (travel.startup.embedded.EmbeddedStack) of `make run` and the test session: it starts,
answers, keeps its data across a restart, runs PostgreSQL unprivileged, and stops cleanly."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.support.db import connected
from tests.support.stack import start_stopped_servers
from travel.startup.embedded import EmbeddedStack

pytestmark = pytest.mark.slow  # starts and stops PostgreSQL and Valkey of its own: seconds


@pytest.fixture
def local_stack(module_stack: EmbeddedStack) -> Iterator[EmbeddedStack]:
    """This module's stack, running; started again after a test that stopped it."""
    try:
        yield module_stack
    finally:
        start_stopped_servers(module_stack)


def live_processes_under(root: Path) -> set[int]:
    """Processes (zombies aside) started from `root` or working in it: both servers and every
    PostgreSQL child, whose titles no longer show the path but whose working directory does."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # it ended while we looked
        if str(root) in cmdline or cwd.startswith(str(root)):
            found.add(int(entry.name))
    return found


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def uids_inside_namespace(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uid of `pid` as its own user namespace sees them."""
    status = Path(f"/proc/{pid}/status").read_text()
    seen_here = [int(uid) for uid in re.search(r"^Uid:(.*)$", status, re.MULTILINE).group(1).split()]
    mapping = [tuple(map(int, line.split())) for line in Path(f"/proc/{pid}/uid_map").read_text().splitlines()]
    return [
        inside + uid - outside
        for uid in seen_here
        for inside, outside, length in mapping
        if outside <= uid < outside + length
    ]


def postmaster_pid(stack: EmbeddedStack) -> int:
    return int((stack.postgres.data_dir / "postmaster.pid").read_text().split()[0])


async def test_the_stack_answers_sql_and_ping(local_stack: EmbeddedStack) -> None:
    async with connected(local_stack.postgres.url) as conn:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT current_setting('data_directory')") == str(local_stack.postgres.data_dir)
    client = aioredis.Redis.from_url(local_stack.redis.url)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()


async def test_postgres_never_runs_as_root(local_stack: EmbeddedStack) -> None:
    async with connected(local_stack.postgres.url) as conn:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        for pid in (postmaster_pid(local_stack), backend):
            uids = uids_inside_namespace(pid)
            assert len(uids) == 4 and 0 not in uids, (pid, uids)


async def test_data_survives_a_restart(local_stack: EmbeddedStack) -> None:
    async with connected(local_stack.postgres.url) as conn:
        await conn.execute("CREATE TABLE kept (note text); INSERT INTO kept VALUES ('before the restart')")
    local_stack.stop()
    local_stack.start()
    async with connected(local_stack.postgres.url) as conn:
        assert await conn.fetchval("SELECT note FROM kept") == "before the restart"


def test_stop_leaves_no_process_and_no_open_port(local_stack: EmbeddedStack) -> None:
    ports = (local_stack.postgres.port, local_stack.redis.port)
    running = live_processes_under(local_stack.root)
    assert {postmaster_pid(local_stack), local_stack.redis.process.pid} <= running  # the scan sees them
    assert all(port_is_open(port) for port in ports)
    local_stack.stop()
    assert live_processes_under(local_stack.root) == set()
    assert not any(port_is_open(port) for port in ports)
    local_stack.stop()  # a second stop is harmless
