"""Configuration from the environment: one field per variable, its default written once.

Each field of `Settings` is read from the variable of its name in capitals (`pool_max` from
POOL_MAX). A value that does not parse, or lies outside its field's range, stops the start
with one line naming the variable (`SettingsError`), never a traceback.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
MAX_READ_TIMEOUT = 15.0  # a request not arrived within this is closed (the edge)


class SettingsError(ValueError):
    """A variable of the environment that cannot configure the service."""


@dataclass(frozen=True)
class Settings:
    """The service's configuration (docs/design.md: shape). Empty URLs: start the embedded default."""

    database_url: str = ""
    redis_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    demo_scale: int | None = None  # None: the embedded default loads scale 1, others none
    admin_token: str = ""  # registered at start as an admin write token
    log_level: str = "info"
    access_log: bool = True  # ACCESS_LOG=off: no request log, whatever LOG_LEVEL says
    read_database_url: str = ""  # a streaming replica for the reads that tolerate lag
    # LISTEN needs a session of its own: behind a transaction-pooling PgBouncer, point this
    # at PostgreSQL directly (default: database_url).
    listen_database_url: str = ""
    redis_sentinels: str = ""  # host:port,host:port: find the Redis primary through Sentinel
    redis_sentinel_service: str = "travel"
    pool_min: int = 4
    pool_max: int = 16
    max_waiting: int = 256  # requests queued for a connection before 503 OVERLOADED
    unix_socket: str = ""  # listen on this unix socket (behind nginx) instead of host:port
    read_timeout: float = 10.0  # seconds for a request's head and body to arrive (edge/protocol.py)
    max_connections: int = 0  # open connections per worker; 0: edge/protocol.py's default under the fd limit
    max_connections_per_address: int = 0  # of them, from one client address; 0: 512 (at most half)
    auth_failures_per_minute: int = 30  # failed authentications per client address, then 429 (auth.py)
    embedded_stack: bool = True  # start a private PostgreSQL/Redis for unset URLs (the image says 0)

    def __post_init__(self) -> None:
        checks = (
            ("port", 1 <= self.port <= 65535, "a TCP port, 1..65535"),
            ("workers", 1 <= self.workers <= 64, "1..64"),
            ("demo_scale", self.demo_scale is None or 0 <= self.demo_scale <= 1000, "0..1000"),
            ("log_level", self.log_level in LOG_LEVELS, " | ".join(LOG_LEVELS)),
            ("pool_min", 0 <= self.pool_min <= self.pool_max, "0..POOL_MAX"),
            ("pool_max", 1 <= self.pool_max <= 1000, "1..1000"),
            ("max_waiting", 0 <= self.max_waiting, "0 or more"),
            (
                "read_timeout",
                0 < self.read_timeout <= MAX_READ_TIMEOUT,
                f"seconds, more than 0 and at most {MAX_READ_TIMEOUT:g}",
            ),
            ("max_connections", 0 <= self.max_connections, "0 (automatic) or more"),
            ("max_connections_per_address", 0 <= self.max_connections_per_address, "0 (automatic) or more"),
            ("auth_failures_per_minute", 1 <= self.auth_failures_per_minute, "1 or more"),
        )
        for name, valid, expected in checks:
            if not valid:
                raise SettingsError(f"{name.upper()}={getattr(self, name)!r}: expected {expected}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `environ` (default: os.environ); `overrides` win over both."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            raw = environ.get(spec.name.upper(), "").strip()
            if spec.name in overrides or not raw:
                continue
            values[spec.name] = _parse(spec.name, spec.type, raw)
        return cls(**{**values, **overrides})


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _parse(name: str, annotation: Any, raw: str) -> Any:
    if annotation == "bool":
        if raw.lower() not in _BOOLEANS:
            raise SettingsError(f"{name.upper()}={raw!r}: expected 1 or 0")
        return _BOOLEANS[raw.lower()]
    if "float" in str(annotation):
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{name.upper()}={raw!r}: expected a number") from None
    if "int" not in str(annotation):
        return raw.lower() if name == "log_level" else raw
    if not raw.isascii() or not raw.lstrip("-").isdigit():
        raise SettingsError(f"{name.upper()}={raw!r}: expected a whole number")
    return int(raw)
