"""Logs: JSON lines on stderr, and a buffered request log beside `logging`.

Errors and warnings go through `logging` and are written at once (`JSONFormatter`). The
request log (one line per request, logger name `travel.access`) does not: a `LogRecord`, a
formatter and a write per request cost a quarter of a cache hit's time. Like nginx's
`access_log ... buffer=32k flush=1s`, each line is encoded by one reused msgspec encoder into a
buffer that is written when it passes 32 KiB, a second after its first line, before any
`logging` line (so the file keeps time order) and at shutdown. A line carries method, path,
route, status, duration, cache HIT/MISS and a request id, never a header value or a body, so
no token and no personal data reach the logs.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import os
import select
import threading
import time
import uuid
from typing import Any

import msgspec

ACCESS_LOGGER = "travel.access"
BUFFER_BYTES = 32 * 1024
FLUSH_SECONDS = 1.0
# Workers share one stderr: a write of at most PIPE_BUF bytes to a pipe is never interleaved
# with another process's, so each write holds whole lines and at most this much.
ATOMIC_WRITE = select.PIPE_BUF


# ---------------------------------------------------------------- request ids
# New request ids: this process's random prefix and a counter (a uuid4 per request costs more).
_ID_PREFIX = uuid.uuid4().hex[:12].encode()
_ID_NUMBERS = itertools.count(1)


def request_id(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The caller's X-Request-ID when it is a short plain token, else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            if 0 < len(value) <= 64 and value.isascii() and value.replace(b"-", b"").isalnum():
                return value
            break
    return b"%s-%d" % (_ID_PREFIX, next(_ID_NUMBERS))


# ---------------------------------------------------------------- the request log
# The shape `JSONFormatter` gives a record, so readers of the log see one format. Only the
# path comes from the client and is JSON-encoded; the id is checked (request_id), the method
# is an HTTP token, the route one of ours, the cache a header of ours: none needs escaping.
REQUEST_LINE = (
    b'{"ts":"%s","level":"info","logger":"' + ACCESS_LOGGER.encode() + b'","msg":"request","request":'
    b'{"id":"%s","method":"%s","path":%s,"route":"%s","status":%d,"ms":%.3f,"cache":%s}}\n'
)
CACHE_JSON = {b"": b"null", b"HIT": b'"HIT"', b"MISS": b'"MISS"'}


class AccessLog:
    """The request log of this process: whole lines, buffered, written to `fd`."""

    def __init__(self, fd: int = 2) -> None:
        self.fd = fd
        # Writes of whole lines and at most this much: PIPE_BUF while other workers share the
        # file (see `share_with_workers`), else the whole buffer in one write.
        self.write_size = BUFFER_BYTES
        self._buffer = bytearray()
        self._encode = msgspec.json.Encoder().encode
        self._flush_timer: asyncio.TimerHandle | None = None
        self._thread = threading.get_ident()  # the event loop's, which appends lines
        self._millisecond = -1
        self._ts = b""

    def share_with_workers(self, shared: bool) -> None:
        """Whether other processes write to the same stderr (WORKERS > 1)."""
        self.write_size = ATOMIC_WRITE if shared else BUFFER_BYTES

    def request(
        self, rid: bytes, method: str, path: str, route: str, status: int, seconds: float, cache: bytes
    ) -> None:
        """Append one request's line; write the buffer once it is full."""
        now = time.time()
        millisecond = int(now * 1000)
        if millisecond != self._millisecond:  # format the time once a millisecond, not per request
            self._millisecond = millisecond
            self._ts = b"%s.%03dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode(), millisecond % 1000)
        buffer = self._buffer
        if not buffer:
            self._flush_timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            self._thread = threading.get_ident()
        buffer += REQUEST_LINE % (
            self._ts,
            rid,
            method.encode(),
            self._encode(path),
            route.encode(),
            status,
            seconds * 1000,
            CACHE_JSON.get(cache) or self._encode(cache.decode()),
        )
        if len(buffer) >= BUFFER_BYTES:
            self.flush()

    def flush_if_mine(self) -> None:
        """Flush, unless called from a thread other than the one appending (it could lose a line)."""
        if threading.get_ident() == self._thread:
            self.flush()

    def flush(self) -> None:
        """Write every buffered line now, in writes of whole lines (from the appending thread)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not self._buffer:
            return
        data, self._buffer = bytes(self._buffer), bytearray()
        view = memoryview(data)
        start = 0
        while start < len(data):
            end = (
                len(data)
                if len(data) - start <= self.write_size
                else data.rfind(b"\n", start, start + self.write_size) + 1
            )
            if end <= start:  # one line longer than PIPE_BUF: alone in its write(s)
                end = data.index(b"\n", start) + 1
            while start < end:
                try:
                    start += os.write(self.fd, view[start:end])
                except InterruptedError:
                    continue
                except OSError:  # stderr gone (closed pipe): the log cannot be written anywhere
                    return


ACCESS_LOG = AccessLog()
atexit.register(ACCESS_LOG.flush)


def access_log_wanted(access_log: bool) -> bool:
    """Whether requests are logged: ACCESS_LOG on and `travel.access` at INFO (LOG_LEVEL)."""
    return access_log and logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)


# ---------------------------------------------------------------- logging
class JSONFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, a record's `request`."""

    converter = time.gmtime  # type: ignore[assignment]  # typeshed: a method; here a plain function

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return msgspec.json.encode(line).decode()


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, after the request lines buffered before this record (one file, in time order)."""

    def emit(self, record: logging.LogRecord) -> None:
        ACCESS_LOG.flush_if_mine()
        super().emit(record)


def logging_config(level: str) -> dict[str, Any]:
    """dictConfig for JSON lines on stderr at `level` (LOG_LEVEL), ours and uvicorn's alike;
    uvicorn applies it in every worker process too."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JSONFormatter}},
        "handlers": {"stderr": {"()": StderrHandler, "formatter": "json"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error")},
    }
