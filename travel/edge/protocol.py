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
- past `limit_concurrency` open connections a worker first closes its oldest idle connection
  (one waiting for a request, as nginx reuses them) to admit a new one, and refuses with a
  problem+json 503 when none is idle; one address may hold at most `per_address` of them
  (a unix socket's peer, nginx, is not counted: its `limit_conn` does that); so client sockets
  never take the descriptors PostgreSQL and Redis need, and no one address all the slots;
- output is bounded (slow readers): a TCP connection's kernel send buffer is capped at
  `SEND_BUFFER` (nginx's `sndbuf`), and once the kernel takes no more of its output and
  `OUTPUT_HIGH` more waits in the process, the connection is stalled: nothing more of it is
  read, parsed or answered until the client reads.
  A worker's stalled connections hold at most `OUTPUT_BUDGET` of unsent output (past it the
  longest-stalled are closed), and one stalled `read_timeout` seconds is closed. A connection
  the service closes while its output is unread is reset (`SO_LINGER` 0): the kernel drops
  the output instead of keeping it for a client that does not read.

Every refusal is problem+json where an answer can still be given, and counted in
`travel_edge_refusals_total{reason}`.

`uvicorn_options(settings)` is what `uvicorn.run` needs to use all of it.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import http
import logging
import math
import resource
import socket
import struct
import sys
import termios
import weakref
from typing import Any

import httptools
from prometheus_client import Counter
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
DEFAULT_PER_ADDRESS = 512  # of them from one client address (a NAT's many clients share one)
FD_RESERVE = 256  # descriptors left for the PostgreSQL and Redis pools, listeners and files
_NO_DEADLINE = math.inf
_IN_BODY = sys.maxsize  # head room while the body is read: the head limit does not apply
MAX_PIPELINED = 16  # requests of one connection read ahead of their answers
SEND_BUFFER = 16 * 1024  # SO_SNDBUF of a TCP connection (the kernel doubles it): nginx's sndbuf
# Output held in the process (what the kernel would not take) past which a connection stalls.
# Not 0: below its high-water mark uvloop sends a loop turn's writes together, and sooner
# measurably cost throughput.
OUTPUT_HIGH = 16 * 1024
OUTPUT_BUDGET = 48 * 1024 * 1024  # unsent output a worker's stalled connections may hold in all
REFUSED_GRACE = 1.0  # seconds a refused connection has to send its request and read the 503
_LINGER_ZERO = struct.pack("ii", 1, 0)

REFUSALS = Counter("travel_edge_refusals_total", "Connections and requests the edge refused or closed", ["reason"])


def _problem_answer(status: int, code: str, detail: str, **headers: str) -> bytes:
    """A whole problem+json answer that closes its connection, made once."""
    response = Problem(status, code, detail, headers=headers).response()
    head = b"".join(b"%s: %s\r\n" % header for header in response.raw_headers)
    line = b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode())
    return line + head + b"connection: close\r\n\r\n" + response.body


HEAD_TOO_LARGE = _problem_answer(431, "HEADERS_TOO_LARGE", f"the request line and headers exceed {HEAD_LIMIT} bytes")
BAD_REQUEST = _problem_answer(400, "BAD_REQUEST", "the request is not valid HTTP/1.1")
TRAILER_REFUSED = _problem_answer(400, "TRAILER_REFUSED", "a chunked body's trailer fields are not accepted")
UPGRADE_REFUSED = _problem_answer(400, "UPGRADE_REFUSED", "no protocol upgrade is offered for a request with a body")
TOO_MANY_CONNECTIONS = _problem_answer(
    503, "TOO_MANY_CONNECTIONS", "this address holds as many connections as it may", **{"Retry-After": "1"}
)
CONNECTIONS_FULL = _problem_answer(
    503, "CONNECTIONS_FULL", "the worker holds as many connections as it may, none of them idle", **{"Retry-After": "1"}
)


class _StopParsing(Exception):
    """Raised in a parser callback once the connection is closed: httptools then parses nothing
    more of what was read (uvicorn's 400 for it is skipped: see send_400_response)."""


def unsent_in_kernel(sock: socket.socket) -> int:
    """Bytes written to `sock` that its peer has not acknowledged (SIOCOUTQ): a syscall."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])
    except (OSError, ValueError):
        return 0


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, bounded in head size, read time and connection count.

    O(1) per read: `head_room` counts down the bytes a head may still take (reset when a
    message completes) and `read_deadline` is set when a request starts arriving and cleared
    once it has all arrived; `_Sweep` closes the connections past their deadline. Per answer,
    one dict insertion marks the connection idle (evictable) and the next read removes it.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        read_timeout: float = MAX_READ_TIMEOUT,
        per_address: int = 0,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.read_timeout = read_timeout
        self.head_room = HEAD_LIMIT
        self.in_body = False  # between a request's head and its end: a header now is a trailer
        self.read_deadline = _NO_DEADLINE
        # The cap is applied here, in connection_made: uvicorn's own check (a text/plain 503 to
        # every request while the worker is at its cap) is turned off.
        self.cap = self.limit_concurrency or DEFAULT_MAX_CONNECTIONS
        self.limit_concurrency = None
        self.per_address = per_address or min(DEFAULT_PER_ADDRESS, max(1, self.cap // 2))
        self.address: str | None = None  # the peer's IP address; None on a unix socket
        self.sock: socket.socket | None = None  # set for TCP: the send buffer, the reset on close
        self.refused = False  # answered 503 at connect: what it sends is not parsed
        self.lingering = False  # refused, waiting for the client's request before closing
        self.deferred = False  # an answer completed while stalled: the next is started on resume

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.sweep = _sweep_of(self.server_state, self.loop, self.read_timeout)
        self.sweep.start()
        # Output the kernel will not take is held by uvloop; past OUTPUT_HIGH the connection stalls.
        transport.set_write_buffer_limits(high=OUTPUT_HIGH)
        if self.client is not None:
            self.address = self.client[0]
            self.sock = transport.get_extra_info("socket")
            if self.sock is not None:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            if self.sweep.count_address(self.address) > self.per_address:
                self.refuse_connection(TOO_MANY_CONNECTIONS, "connections per address")
                return
        if len(self.connections) - self.sweep.lingering > self.cap and not self.sweep.close_oldest_idle():
            self.refuse_connection(CONNECTIONS_FULL, "connections per worker")
            return
        # A connection that never sends a byte is held no longer than a slow request.
        self.read_deadline = self.loop.time() + self.read_timeout
        self.sweep.idle[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.sweep.forget(self)

    def refuse_connection(self, answer: bytes, reason: str) -> None:
        """503 at once, then close once the client's request (or its close) has come, at most
        REFUSED_GRACE later: closing before would meet its request with a reset, which may
        cost the client the 503. Such connections hold no slot; past FD_RESERVE / 2 of them
        (a flood of refusals) they are closed at once."""
        REFUSALS.labels(reason).inc()
        self.refused = True
        self.transport.write(answer)
        if self.sweep.lingering >= FD_RESERVE // 2:
            self.transport.close()
            return
        self.sweep.lingering += 1
        self.lingering = True
        self.transport.write_eof()
        self.read_deadline = self.loop.time() + REFUSED_GRACE

    def data_received(self, data: bytes) -> None:
        if self.refused:  # its request, read: the close is a FIN, not a reset
            self.transport.close()
            return
        self.sweep.idle.pop(self, None)
        if self.read_deadline == _NO_DEADLINE:
            self.read_deadline = self.loop.time() + self.read_timeout
        if len(data) <= self.head_room:
            self.head_room -= len(data)
            self.feed(data)
            return
        # This read would take the head past its limit, unless the head ends within it: feed
        # only what the limit allows, and go on only if a head or message completed there.
        start = 0
        while len(data) - start > self.head_room:
            allowed = self.head_room
            self.head_room = 0
            if allowed:
                self.feed(data[start : start + allowed])
                start += allowed
            if self.transport.is_closing():
                return
            if self.head_room == 0:
                self.refuse_head()
                return
        self.head_room -= len(data) - start
        self.feed(data[start:])

    def feed(self, data: bytes) -> None:
        """uvicorn's data_received, less its log lines (an attack's thousands of bad requests or
        h2c upgrades would each log one or two, and a log line costs as much as an answer)."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():  # a WebSocket; any other upgrade was answered without it
                self.handle_websocket_upgrade()
        except httptools.HttpParserError:
            if not self.transport.is_closing():  # else closed by the edge: _StopParsing
                self.refuse(BAD_REQUEST, "bad request", "not valid HTTP/1.1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_body:  # a chunked body's trailer (it would join headers already read), or closed
            if not self.transport.is_closing():
                self.refuse(TRAILER_REFUSED, "trailer", "a trailer after a chunked body")
            raise _StopParsing
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.transport.is_closing():  # refused: parse nothing more of what was read
            raise _StopParsing
        self.head_room = _IN_BODY
        self.in_body = True
        if self.parser.should_upgrade() and not self._should_upgrade():
            # h2c (or any upgrade but a WebSocket): httptools parses nothing after this head, so
            # a body or a pipelined request would hang. Without a body it is answered, then closed.
            if any(name in (b"content-length", b"transfer-encoding") for name, _ in self.headers):
                self.refuse(UPGRADE_REFUSED, "upgrade", "an upgrade with a body")
                return
            super().on_headers_complete()
            self.cycle.keep_alive = False
            REFUSALS.labels("upgrade").inc()
        else:
            super().on_headers_complete()
        if len(self.pipeline) > MAX_PIPELINED:  # requests read ahead of their answers pile up in memory
            REFUSALS.labels("pipeline").inc()
            self.close_because(f"more than {MAX_PIPELINED} pipelined requests waiting")
            raise _StopParsing
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # the cycle just made
            one_write = OneWrite(self.transport, cycle.on_response, cycle)
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
        self.in_body = False
        self.read_deadline = _NO_DEADLINE

    def on_response_complete(self) -> None:
        if self.transport.is_closing():  # `Connection: close`: uvloop closes once the output is sent...
            if self.transport.get_write_buffer_size():  # ... which a client that does not read never lets be
                self.read_deadline = self.loop.time() + self.read_timeout
        elif self.flow.write_paused:
            self.deferred = True  # stalled: the next request waits until the client reads
            return
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # waiting for a request: the oldest may make room
            self.sweep.idle[self] = None

    def pause_writing(self) -> None:
        """The kernel takes no more of this connection's output: read and answer nothing more."""
        super().pause_writing()
        self.flow.pause_reading()
        unsent = self.transport.get_write_buffer_size()
        self.sweep.stall(self, unsent + (unsent_in_kernel(self.sock) if self.sock is not None else 0))

    def resume_writing(self) -> None:
        super().resume_writing()
        self.sweep.unstall(self)
        if self.deferred:
            self.deferred = False
            self.on_response_complete()
        elif not self.pipeline:
            self.flow.resume_reading()

    def timeout_keep_alive_handler(self) -> None:
        if self.sock is not None and not self.transport.is_closing() and unsent_in_kernel(self.sock):
            REFUSALS.labels("unread at keep-alive timeout").inc()
            self.drop("its answers were still unread at the keep-alive timeout")
            return
        super().timeout_keep_alive_handler()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what does not parse as HTTP, as problem+json."""
        if self.transport.is_closing():  # closed by the edge: _StopParsing
            return
        self.refuse(BAD_REQUEST, "bad request", msg)

    def close_because(self, reason: str) -> None:
        self.sweep.note(self, "closed a connection", reason)
        self.abandon()
        self.close_unread()

    def abandon(self) -> None:
        """The request being answered will not be: its app is told the client has gone (as
        uvicorn tells it once the connection is lost), and what it sends is dropped."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()

    def close_unread(self) -> None:
        """Close; reset instead if the client has not read what was sent (nothing kept for it)."""
        if self.sock is not None and (self.transport.get_write_buffer_size() or unsent_in_kernel(self.sock)):
            self.drop("")
        else:
            self.transport.close()

    def drop(self, reason: str) -> None:
        """Close at once with a reset: the kernel discards what the client has not read. The
        reason is logged once per sweep with its count (an attack is thousands of them)."""
        if reason:
            self.sweep.note(self, "reset a connection", reason)
        self.abandon()
        if self.sock is not None:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            except OSError:
                pass
        self.transport.abort()

    def refuse(self, answer: bytes, reason: str, why: str) -> None:
        """A problem+json answer (unless one has begun) and close; the request being read, if
        any, is abandoned: its app sees the client gone."""
        REFUSALS.labels(reason).inc()
        cycle = self.cycle
        if cycle is None or not cycle.response_started or cycle.response_complete:
            self.transport.write(answer)
        self.abandon()
        self.sweep.note(self, "refused a request", why)
        self.transport.close()

    def refuse_head(self) -> None:
        """431 and close: the head is over HEAD_LIMIT (no answer if one is being written)."""
        REFUSALS.labels("head too large").inc()
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(HEAD_TOO_LARGE)
        self.abandon()
        self.sweep.note(self, "closed a connection", f"request head over {HEAD_LIMIT} bytes (431)")
        self.transport.close()

    def read_timed_out(self) -> None:
        self.read_deadline = _NO_DEADLINE
        if not self.refused:
            REFUSALS.labels("read timeout").inc()
        self.close_unread()


class _Sweep:
    """A worker's (uvicorn server's) shared edge state: its idle connections (oldest first), its
    stalled ones (longest-stalled first) and the output they hold, open connections per address;
    and one periodic check that closes connections past their read deadline or stalled too
    long. It runs only while the worker has connections."""

    def __init__(self, server_state: ServerState, loop: asyncio.AbstractEventLoop, period: float) -> None:
        self.connections = server_state.connections
        self.loop = loop
        self.period = period
        self.timer: asyncio.TimerHandle | None = None
        self.idle: dict[EdgeProtocol, None] = {}  # waiting for a request, oldest first
        self.stalled: dict[EdgeProtocol, tuple[float, int]] = {}  # since, unsent bytes (estimated)
        self.stalled_bytes = 0
        self.by_address: dict[str, int] = {}
        self.lingering = 0  # refused connections not yet closed (they hold no slot)
        self.noted: dict[tuple[str, str], int] = {}  # what the edge did since the last sweep, and how often

    def note(self, connection: EdgeProtocol, action: str, reason: str) -> None:
        """Log what the edge did to a connection: the first of its kind per sweep at once, the
        rest as one count at the sweep (an attack is thousands of them; a log line costs)."""
        count = self.noted.get((action, reason), 0)
        self.noted[action, reason] = count + 1
        if not count:
            client = connection.client
            log.info("%s from %s: %s", action, f"{client[0]}:{client[1]}" if client else "the unix socket", reason)

    def start(self) -> None:
        if self.timer is None:
            self.timer = self.loop.call_later(self.period, self.run)

    def count_address(self, address: str) -> int:
        count = self.by_address[address] = self.by_address.get(address, 0) + 1
        return count

    def forget(self, connection: EdgeProtocol) -> None:
        """The connection has gone."""
        if connection.lingering:
            self.lingering -= 1
        self.idle.pop(connection, None)
        self.unstall(connection)
        address = connection.address
        if address is not None:
            count = self.by_address.get(address, 0) - 1
            if count > 0:
                self.by_address[address] = count
            else:
                self.by_address.pop(address, None)

    def close_oldest_idle(self) -> bool:
        """Make room for a new connection, as nginx does at worker_connections."""
        for connection in self.idle:
            del self.idle[connection]
            REFUSALS.labels("idle closed for a new connection").inc()
            connection.transport.close()
            return True
        return False

    def stall(self, connection: EdgeProtocol, unsent: int) -> None:
        if connection in self.stalled:
            return
        self.stalled[connection] = (self.loop.time(), unsent)
        self.stalled_bytes += unsent
        while self.stalled_bytes > OUTPUT_BUDGET and self.stalled:
            slowest = next(iter(self.stalled))
            self.unstall(slowest)
            REFUSALS.labels("output budget").inc()
            slowest.drop(f"the worker's unsent output passed {OUTPUT_BUDGET // 1024 // 1024} MiB")

    def unstall(self, connection: EdgeProtocol) -> None:
        stalled = self.stalled.pop(connection, None)
        if stalled is not None:
            self.stalled_bytes -= stalled[1]

    def run(self) -> None:
        now = self.loop.time()
        for connection, (since, _) in list(self.stalled.items()):
            if since + connection.read_timeout >= now:
                break
            self.unstall(connection)
            REFUSALS.labels("send timeout").inc()
            connection.drop(f"its answers went unread for {connection.read_timeout:g} s")
        late = [
            connection
            for connection in self.connections
            if isinstance(connection, EdgeProtocol) and connection.read_deadline < now
        ]
        for connection in late:
            connection.read_timed_out()
        for (action, reason), count in self.noted.items():
            if count > 1:
                log.info("%s: %d more like it: %s", action, count - 1, reason)
        self.noted.clear()
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
        "http": functools.partial(
            EdgeProtocol, read_timeout=settings.read_timeout, per_address=settings.max_connections_per_address
        ),
        "limit_concurrency": connection_cap(settings.max_connections, raise_open_file_limit()),
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        # Nothing here reads the client's address (nginx logs and limits by it on VM1): not
        # parsing X-Forwarded-For spares a middleware layer on every request.
        "proxy_headers": False,
    }
    if settings.unix_socket:
        return {**options, "uds": settings.unix_socket}
    return {**options, "host": settings.host, "port": settings.port}
