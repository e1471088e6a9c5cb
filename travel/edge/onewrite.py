"""An answer in one send(): speed, not protection (the edge's bounds are in protocol.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class OneWrite:
    """The transport a response cycle writes to: it holds the status line and headers until
    the body's first bytes, so that an answer leaves in one send() instead of two (uvicorn
    writes them apart: a syscall per answer, a fifth of a cache hit's cost here). A
    `100 Continue` passes at once: the client waits for it before sending the body."""

    __slots__ = ("cycle", "held", "on_response", "transport", "waiting_for_head")

    def __init__(self, transport: asyncio.Transport, on_response: Callable[[], None], cycle: Any = None) -> None:
        self.transport = transport
        # uvicorn's RequestResponseCycle, told when the connection was closed under it; let go
        # of once the answer is whole (objects in a reference cycle wait for the collector).
        self.cycle = cycle
        self.on_response = on_response
        self.held = b""
        self.waiting_for_head = True

    def write(self, data: bytes) -> None:
        if self.transport.is_closing():  # as an ASGI server says the client has gone (499)
            if self.cycle is not None:  # closed by the edge: uvicorn need not log an unfinished answer
                self.cycle.disconnected = True
            raise ConnectionResetError("the client's connection is closed")
        if self.held:
            self.held, data = b"", self.held + data
        elif self.waiting_for_head and not data.startswith(b"HTTP/1.1 100 "):
            self.waiting_for_head = False
            self.held = data
            return
        self.transport.write(data)

    def flush(self) -> None:
        if self.held and not self.transport.is_closing():
            self.held, held = b"", self.held
            self.transport.write(held)

    def complete(self) -> None:
        """The answer is whole: what is held goes (a HEAD answer's head), then uvicorn's own step."""
        self.cycle = None  # the cycle refers to this object: no reference cycle outlives the answer
        self.flush()
        self.on_response()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()
