"""The edge of the service (docs/design.md: the edge): bounds on what one client may make a worker hold.

httptools accepts a request head of any size (and builds a long header value at a cost that
grows with the square of its size) and uvicorn never times out a request that is still
arriving. `EdgeProtocol`, uvicorn's httptools protocol with two counters, adds what gunicorn's
`limit_request_field_size` and Go's `ReadHeaderTimeout` give:

- a request line + headers over `HEAD_LIMIT` bytes is answered 431 and the connection closed,
  after at most `HEAD_LIMIT` bytes of it were parsed;
- a request whose head and body have not all arrived `read_timeout` seconds after its first
  byte (or after the connection opened) has its connection closed, by one sweep per worker
  rather than a timer per request;
- past `limit_concurrency` open connections a worker closes new ones at once, so client
  sockets never take the descriptors PostgreSQL and Redis need.

`uvicorn_options(settings)` is what `uvicorn.run` needs to use all of it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import resource
import sys
import weakref
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from travel.edge.onewrite import OneWrite
from travel.errors import Problem
from travel.settings import MAX_READ_TIMEOUT, Settings

log = logging.getLogger("travel.edge")

HEAD_LIMIT = 16 * 1024  # request line + headers, as nginx's large_client_header_buffers 1 16k
KEEP_ALIVE_SECONDS = 5  # uvicorn's default; nginx's upstream keepalive_timeout stays below it
DEFAULT_MAX_CONNECTIONS = 4096  # per worker; each may hold up to HEAD_LIMIT of unparsed head
FD_RESERVE = 256  # descriptors left for the PostgreSQL and Redis pools, listeners and files
_NO_DEADLINE = math.inf
_IN_BODY = sys.maxsize  # head room while the body is read: the head limit does not apply
MAX_PIPELINED = 16  # requests of one connection read ahead of their answers


def _head_too_large_response() -> bytes:
    problem = Problem(431, "HEADERS_TOO_LARGE", f"the request line and headers exceed {HEAD_LIMIT} bytes")
    response = problem.response()
    head = b"".join(b"%s: %s\r\n" % header for header in response.raw_headers)
    return b"HTTP/1.1 431 Request Header Fields Too Large\r\n" + head + b"connection: close\r\n\r\n" + response.body


HEAD_TOO_LARGE = _head_too_large_response()


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, bounded in head size, read time and connection count.

    O(1) per read: `head_room` counts down the bytes a head may still take (reset when a
    message completes) and `read_deadline` is set when a request starts arriving and cleared
    once it has all arrived; `_Sweep` closes the connections past their deadline.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        read_timeout: float = MAX_READ_TIMEOUT,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.read_timeout = read_timeout
        self.head_room = HEAD_LIMIT
        self.read_deadline = _NO_DEADLINE

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.limit_concurrency is not None and len(self.connections) > self.limit_concurrency:
            transport.close()
            return
        # A connection that never sends a byte is held no longer than a slow request.
        self.read_deadline = self.loop.time() + self.read_timeout
        _sweep_of(self.server_state, self.loop, self.read_timeout).start()

    def data_received(self, data: bytes) -> None:
        if self.read_deadline == _NO_DEADLINE:
            self.read_deadline = self.loop.time() + self.read_timeout
        if len(data) <= self.head_room:
            self.head_room -= len(data)
            super().data_received(data)
            return
        # This read would take the head past its limit, unless the head ends within it: feed
        # only what the limit allows, and go on only if a head or message completed there.
        start = 0
        while len(data) - start > self.head_room:
            allowed = self.head_room
            self.head_room = 0
            if allowed:
                super().data_received(data[start : start + allowed])
                start += allowed
            if self.transport.is_closing():
                return
            if self.head_room == 0:
                self.refuse_head()
                return
        self.head_room -= len(data) - start
        super().data_received(data[start:])

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_room == _IN_BODY:  # a chunked body's trailer: it would join headers already read
            self.close_because("a trailer after a chunked body")
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.transport.is_closing():  # refused: parse nothing more of what was read
            return
        self.head_room = _IN_BODY
        super().on_headers_complete()
        if len(self.pipeline) > MAX_PIPELINED:  # requests read ahead of their answers pile up in memory
            self.close_because(f"more than {MAX_PIPELINED} pipelined requests waiting")
            return
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # the cycle just made
            one_write = OneWrite(self.transport, cycle.on_response)
            cycle.transport = one_write  # type: ignore[assignment]
            cycle.on_response = one_write.complete

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.transport.is_closing():
            return
        super().on_message_complete()
        self.head_room = HEAD_LIMIT
        self.read_deadline = _NO_DEADLINE

    def close_because(self, reason: str) -> None:
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "the unix socket"
        log.info("closed a connection from %s: %s", client, reason)
        self.transport.close()

    def refuse_head(self) -> None:
        """431 and close: the head is over HEAD_LIMIT (no answer if one is being written)."""
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(HEAD_TOO_LARGE)
        self.close_because(f"request head over {HEAD_LIMIT} bytes (431)")

    def read_timed_out(self) -> None:
        self.read_deadline = _NO_DEADLINE
        self.transport.close()


class _Sweep:
    """One periodic check per uvicorn server (worker) that closes connections past their
    read deadline; it runs only while the worker has connections."""

    def __init__(self, server_state: ServerState, loop: asyncio.AbstractEventLoop, period: float) -> None:
        self.connections = server_state.connections
        self.loop = loop
        self.period = period
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.timer is None:
            self.timer = self.loop.call_later(self.period, self.run)

    def run(self) -> None:
        now = self.loop.time()
        late = [
            connection
            for connection in self.connections
            if isinstance(connection, EdgeProtocol) and connection.read_deadline < now
        ]
        for connection in late:
            connection.read_timed_out()
        if late:
            log.info(
                "closed %d connection(s) whose request had not arrived within %.3g s", len(late), late[0].read_timeout
            )
        self.timer = self.loop.call_later(self.period, self.run) if self.connections else None


_SWEEPS: weakref.WeakKeyDictionary[ServerState, _Sweep] = weakref.WeakKeyDictionary()


def _sweep_of(server_state: ServerState, loop: asyncio.AbstractEventLoop, read_timeout: float) -> _Sweep:
    sweep = _SWEEPS.get(server_state)
    if sweep is None:
        # A deadline is enforced at most a quarter of the bound (or a second) late.
        sweep = _SWEEPS[server_state] = _Sweep(server_state, loop, min(1.0, read_timeout / 4))
    return sweep


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files to the hard one (workers inherit it);
    return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, error)
    return soft


def connection_cap(requested: int, open_file_limit: int) -> int:
    """Open connections allowed per worker: `requested` (0: DEFAULT_MAX_CONNECTIONS), kept
    below the open-file limit by FD_RESERVE."""
    room = max(16, open_file_limit - FD_RESERVE)
    cap = min(requested or DEFAULT_MAX_CONNECTIONS, room)
    if requested > room:
        log.warning(
            "MAX_CONNECTIONS=%d leaves no descriptors for the pools under the open-file limit %d: using %d",
            requested,
            open_file_limit,
            cap,
        )
    return cap


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of `uvicorn.run`/`uvicorn.Config` for where and how to listen:
    the bounded protocol, the connection cap, the keep-alive timeout, the address or unix
    socket. Raises the open-file limit first (see `raise_open_file_limit`)."""
    options: dict[str, Any] = {
        "http": functools.partial(EdgeProtocol, read_timeout=settings.read_timeout),
        "limit_concurrency": connection_cap(settings.max_connections, raise_open_file_limit()),
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        # Nothing here reads the client's address (nginx logs and limits by it on VM1): not
        # parsing X-Forwarded-For spares a middleware layer on every request.
        "proxy_headers": False,
    }
    if settings.unix_socket:
        return {**options, "uds": settings.unix_socket}
    return {**options, "host": settings.host, "port": settings.port}
