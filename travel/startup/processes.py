"""Small process and file helpers shared by start-up, the embedded stack, tests, the bench
and the topology: free ports, secrets on disk, stopping a child, polling, a server process."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from travel import PROJECT_ROOT

T = TypeVar("T")


def free_port() -> int:
    """A TCP port that nothing listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_secret(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only from the first byte on."""
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as secret:
        secret.write(text)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`; always reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def eventually(check: Callable[[], T | None], within: float, what: str, every: float = 0.05) -> T:
    """Poll `check` until it returns something other than None (or False), at most `within`
    seconds; raise TimeoutError naming `what` after that. For what gives no event to wait
    on: a port that opens, a file that appears, a row another process writes."""
    deadline = time.monotonic() + within
    while True:
        found = check()
        if found is not None and found is not False:
            return found
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {within:g} s")
        time.sleep(every)


class ServerProcess:
    """`python server.py` (or another server command) as a child process: its output goes
    to a file (a pipe that fills would block it), `wait_healthy` polls its health URL.
    The one way tests, the bench and the topology start a server and wait for it."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        log_path: Path,
        command: Sequence[str] = (sys.executable, "server.py"),
        port: int | None = None,
        host: str = "127.0.0.1",
        health_url: str = "",
        inherit_env: bool = True,
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://{host}:{self.port}"
        # Where its health is asked: its own API, unless it listens elsewhere (behind nginx).
        self.health_url = health_url or self.base_url + "/api/v1/health"
        self.log_path = log_path
        base = dict(os.environ) if inherit_env else {}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(command),
                cwd=PROJECT_ROOT,
                env={**base, "PORT": str(self.port), **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_healthy(self, within: float = 60.0) -> None:
        """Until its health URL answers 200; raise with what it printed if it exits first."""

        def healthy() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.health_url}: exited with {self.process.returncode}:\n{self.printed()}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=1) as answer:
                    return bool(answer.status == 200)
            except (OSError, http.client.HTTPException):  # not listening yet, or not healthy
                return False

        try:
            eventually(healthy, within, f"{self.health_url} healthy")
        except TimeoutError as error:
            raise TimeoutError(f"{error}:\n{self.printed()}") from None

    def printed(self, last_lines: int = 0) -> str:
        """What it printed so far (its last `last_lines` lines, when given)."""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-last_lines:]) if last_lines else text

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (as systemd stops it), SIGKILL past `timeout`; its exit status."""
        stop_process(self.process, timeout)
        return self.process.returncode
