"""`python server.py` in a process of its own, as a user runs it: travel.startup.processes.ServerProcess
with this process's environment less the settings that would point it elsewhere."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from travel.startup.processes import ServerProcess

API = "/api/v1"
# The `run_server` fixture: start one with this environment (not yet healthy), stopped after the test.
StartServer = Callable[..., ServerProcess]
# Settings a developer's shell may hold that a test's server must not pick up unasked.
NOT_INHERITED = ("DATABASE_URL", "REDIS_URL", "DEMO_SCALE", "ADMIN_TOKEN")


def server_process(log_path: Path, **env: str) -> ServerProcess:
    """`python server.py` with `env` (not yet healthy: call wait_healthy)."""
    clean = {name: value for name, value in os.environ.items() if name not in NOT_INHERITED}
    return ServerProcess({**clean, **env}, log_path=log_path, inherit_env=False)


def api_url(server: ServerProcess) -> str:
    """The base URL of the server's API (below which /health, /users ... are)."""
    return server.base_url + API
