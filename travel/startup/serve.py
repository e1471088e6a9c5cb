"""Process start-up for `python server.py`: settings, the embedded stack, the schema, demo data,
the admin token, then uvicorn.

Without DATABASE_URL / REDIS_URL it first starts the embedded default (a private PostgreSQL
and Redis under ./.data), loads demo data on first start and prints a write token. The schema
is applied here, once per start, before any worker exists.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import uvicorn
from uvicorn.supervisors import Multiprocess

from travel import PROJECT_ROOT, auth, database
from travel.edge import protocol
from travel.observability import logs, metrics
from travel.settings import Settings, SettingsError
from travel.startup.embedded import EmbeddedStack, StackBusy
from travel.startup.processes import write_secret

DATA_DIR = Path(os.environ.get("DATA_DIR") or PROJECT_ROOT / ".data")
DEFAULT_DEMO_SCALE = 1
API = "/api/v1"


def demo_admin_token(data_dir: Path) -> str:
    """The embedded default's admin token, made once and kept beside its data (mode 0600)."""
    path = data_dir / "admin.token"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        write_secret(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


async def prepare_database(settings: Settings) -> None:
    """Apply sql/ (a no-op when current), load demo data into an empty database when
    DEMO_SCALE asks for it, and register ADMIN_TOKEN: once per start, on one connection."""
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        await database.apply_schema(conn)
        if settings.demo_scale:
            started = time.monotonic()
            if await database.load_demo_data(conn, settings.demo_scale):
                print(
                    f"loaded demo data at scale {settings.demo_scale} in {time.monotonic() - started:.1f} s", flush=True
                )
        if settings.admin_token:
            await database.QUERIES["register-token"](
                conn, auth.digest(settings.admin_token), "admin", "ADMIN_TOKEN", None
            )
    finally:
        await conn.close()


def start_embedded(settings: Settings) -> tuple[EmbeddedStack, Settings]:
    """Start the private PostgreSQL and Redis under DATA_DIR for what the environment left
    unset: a URL given means that server is not started (nor its data directory looked at)."""
    stack = EmbeddedStack(DATA_DIR)
    database_url, redis_url = stack.start(postgres=not settings.database_url, redis=not settings.redis_url)
    database_url, redis_url = settings.database_url or database_url, settings.redis_url or redis_url
    # For psql, redis-cli and bench/run.py by hand: `. .data/urls.env`.
    write_secret(DATA_DIR / "urls.env", f"DATABASE_URL='{database_url}'\nREDIS_URL='{redis_url}'\n")
    embedded_database = not settings.database_url
    return stack, Settings.from_env(
        database_url=database_url,
        redis_url=redis_url,
        demo_scale=DEFAULT_DEMO_SCALE if settings.demo_scale is None and embedded_database else settings.demo_scale,
        admin_token=settings.admin_token or (demo_admin_token(DATA_DIR) if embedded_database else ""),
    )


def listen(settings: Settings, log_config: dict[str, Any]) -> tuple[uvicorn.Config, socket.socket]:
    """uvicorn's configuration and its bound socket: first, so that a busy or wrong address
    fails at once, before any server is started for nothing."""
    config = uvicorn.Config(
        "server:create_app",
        factory=True,
        workers=settings.workers,
        loop="uvloop",
        access_log=False,
        log_level=settings.log_level,
        log_config=log_config,
        timeout_graceful_shutdown=10,
        **protocol.uvicorn_options(settings),
    )
    quiet = _Without("Uvicorn running on")  # said by the banner, once the service answers
    logging.getLogger("uvicorn.error").addFilter(quiet)
    try:
        return config, config.bind_socket()
    except SystemExit:  # uvicorn has logged why (address in use, unknown host ...)
        where = settings.unix_socket or f"{settings.host}:{settings.port}"
        sys.exit(f"cannot listen on {where} (the line above says why): set PORT, HOST or UNIX_SOCKET")
    finally:
        logging.getLogger("uvicorn.error").removeFilter(quiet)


class _Without(logging.Filter):
    """Leaves out log records whose message starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def health_answers(settings: Settings) -> bool:
    """Whether GET /health on our own listener answers 200 (over TCP or the unix socket)."""
    request = f"GET {API}/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    try:
        if settings.unix_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(2)
            sock.connect(settings.unix_socket)
        else:
            host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(settings.host, settings.host)
            sock = socket.create_connection((host, settings.port), timeout=2)
        with sock:
            sock.sendall(request)
            return sock.recv(16).startswith(b"HTTP/1.1 200 ")
    except OSError:
        return False


def announce_when_healthy(settings: Settings, banner: str, within: float = 300.0) -> None:
    """Print `banner` once the service answers /health (from a thread: uvicorn runs in this
    one), never before: a start that fails says only why."""

    def wait_then_print() -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if health_answers(settings):
                print(banner, flush=True)
                return
            time.sleep(0.1)

    threading.Thread(target=wait_then_print, name="banner", daemon=True).start()


def serve(config: uvicorn.Config, listening: socket.socket) -> None:
    """Run uvicorn's workers on the bound socket."""
    if config.workers == 1:
        uvicorn.Server(config).run(sockets=[listening])
        return
    # Chosen before the workers import prometheus_client: /metrics then sums them all.
    with tempfile.TemporaryDirectory(prefix="travel-metrics-") as metrics_dir:
        metrics.prepare_multiprocess(Path(metrics_dir))
        Multiprocess(config, sockets=[listening]).run()


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    """`python server.py`: configure, prepare, serve; stop the embedded stack on the way out."""
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        sys.exit(f"configuration: {error}")
    log_config = logs.logging_config(settings.log_level)
    logging.config.dictConfig(log_config)
    config, listening = listen(settings, log_config)
    stack = None
    if not (settings.database_url and settings.redis_url):
        if not settings.embedded_stack:  # the container image: nothing to start here
            missing = [name for name in ("DATABASE_URL", "REDIS_URL") if not getattr(settings, name.lower())]
            sys.exit(f"{' and '.join(missing)} must be set: EMBEDDED_STACK=0 starts no PostgreSQL or Redis")
        try:
            stack, settings = start_embedded(settings)
        except StackBusy as error:
            sys.exit(str(error))
    try:
        try:
            asyncio.run(prepare_database(settings))
        except OSError as error:  # refused, unreachable, timed out, TLS refused (ssl.SSLError)
            where = urlsplit(settings.database_url)
            sys.exit(f"cannot connect to PostgreSQL at {where.hostname}:{where.port}: {error}")
        # Workers build their app from the environment: hand them what was decided here.
        os.environ.update(
            DATABASE_URL=settings.database_url, REDIS_URL=settings.redis_url, ADMIN_TOKEN=settings.admin_token
        )
        if settings.unix_socket:
            banner = f"serving on unix:{settings.unix_socket} (behind nginx)"
        else:
            address = f"http://{settings.host}:{settings.port}"
            banner = f"serving on {address}{API}/health  (docs: {address}/docs)\ndashboard: {address}/dashboard"
        if stack is not None and stack.started_postgres:
            banner += f"\ndemo admin token: {settings.admin_token}"
        # uvicorn drains, then re-raises the stop signal; a requested stop is a clean exit.
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, _exit_cleanly)
        announce_when_healthy(settings, banner)
        serve(config, listening)
    finally:
        if stack is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan the servers
            stack.stop()
