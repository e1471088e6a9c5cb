"""HTTP/1.1 as the bench writes it: a request as bytes, and one keep-alive connection.

A scenario is a cycle of requests sent over keep-alive connections by wrk (bench/wrk.py) or
the open-loop generator (bench/openloop.py). A request marked `unique_key` gets a fresh
`Idempotency-Key` on every send, so a recharge is a real recharge and never a replay.

`Connection` is the one raw client: an asyncio Protocol that sends a request and hands back
the whole answer, with no HTTP library's parsing in the time measured. The open-loop
generator sends over it, and so do the sequential latency table and the cold-key burst; the
bench's set-up calls go through httpx (bench/fixture.py), whose cost no figure includes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

REQUEST_TIMEOUT = 10.0

Answer = tuple[int, bytes, bytes]  # status, header block, body


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with its query string, from the server's root
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    unique_key: bool = False  # send a fresh Idempotency-Key each time

    def render(self, host: str, key: str | None = None) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if key is not None:
            lines.append(f"Idempotency-Key: {key}")
        body = self.body or b""
        if self.body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass(frozen=True)
class Scenario:
    """Requests sent in this order, round and round, by every connection."""

    name: str
    requests: tuple[Request, ...]


def header_value(head: bytes, name: bytes) -> bytes | None:
    """The value of header `name` (lower case, colon included) in an answer's header block."""
    lowered = head.lower()
    start = lowered.find(b"\r\n" + name)
    if start < 0:
        return None
    end = lowered.find(b"\r\n", start + 2)
    return head[start + 2 + len(name) : end if end >= 0 else None].strip()


def x_cache(head: bytes) -> str:
    """The X-Cache value of an answer's header block, "-" when it has none."""
    return (header_value(head, b"x-cache:") or b"-").decode()


class _Answers(asyncio.Protocol):
    """Collects bytes until the answer awaited is whole (a Content-Length body, or none)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiting: asyncio.Future[Answer] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiting is None or self.waiting.done():
            return
        head = bytes(self.buffer[: end + 2])
        if header_value(head, b"transfer-encoding:") is not None:
            self.waiting.set_exception(ValueError("a chunked answer: the bench's client reads Content-Length only"))
            return
        length = int(header_value(head, b"content-length:") or 0)
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        if (header_value(head, b"connection:") or b"").lower() == b"close" and self.transport is not None:
            self.transport.close()
        self.waiting.set_result((int(head[9:12]), head, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(ConnectionError("connection closed"))


class Connection:
    """One keep-alive HTTP/1.1 connection, opened on first use and again after a close."""

    def __init__(self, url: str, source: str | None = None) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.host_header = parts.netloc
        self.source = source  # the client address to connect from (None: the kernel's choice)
        self.answers: _Answers | None = None

    async def open(self) -> None:
        local = (self.source, 0) if self.source else None
        loop = asyncio.get_running_loop()
        _, self.answers = await loop.create_connection(_Answers, self.host, self.port, local_addr=local)

    def close(self) -> None:
        if self.answers is not None and self.answers.transport is not None:
            self.answers.transport.close()
        self.answers = None

    async def exchange(self, raw: bytes) -> Answer:
        """Send one rendered request; return its whole answer."""
        if self.answers is None or self.answers.closed:
            await self.open()
        answers = self.answers
        assert answers is not None and answers.transport is not None
        answers.waiting = asyncio.get_running_loop().create_future()
        answers.transport.write(raw)
        return await answers.waiting

    async def send(self, request: Request, key: str | None = None) -> Answer:
        """`exchange` within REQUEST_TIMEOUT; on any failure the connection is closed, so that a
        late answer is never taken for the next request's."""
        try:
            return await asyncio.wait_for(self.exchange(request.render(self.host_header, key)), REQUEST_TIMEOUT)
        except BaseException:
            self.close()
            raise
