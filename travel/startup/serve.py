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
    """Start the private PostgreSQL and Redis under DATA_DIR for what the environment left unset."""
    stack = EmbeddedStack(DATA_DIR)
    database_url, redis_url = stack.start()
    # For psql, redis-cli and bench/run.py by hand: `. .data/urls.env`.
    write_secret(DATA_DIR / "urls.env", f"DATABASE_URL='{database_url}'\nREDIS_URL='{redis_url}'\n")
    return stack, Settings.from_env(
        database_url=settings.database_url or database_url,
        redis_url=settings.redis_url or redis_url,
        demo_scale=DEFAULT_DEMO_SCALE if settings.demo_scale is None else settings.demo_scale,
        admin_token=settings.admin_token or demo_admin_token(DATA_DIR),
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
    try:
        return config, config.bind_socket()
    except SystemExit:  # uvicorn has logged why (address in use, unknown host ...)
        where = settings.unix_socket or f"{settings.host}:{settings.port}"
        sys.exit(f"cannot listen on {where} (the line above says why): set PORT, HOST or UNIX_SOCKET")


def serve(config: uvicorn.Config, listening: socket.socket, banner: str) -> None:
    """Print `banner` (the socket is ours by now), then run uvicorn's workers."""
    print(banner, flush=True)
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
        if stack is not None:
            banner += f"\ndemo admin token: {settings.admin_token}"
        # uvicorn drains, then re-raises the stop signal; a requested stop is a clean exit.
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop_signal, _exit_cleanly)
        serve(config, listening, banner)
    finally:
        if stack is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan the servers
            stack.stop()
