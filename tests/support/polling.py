"""The async twin of travel.startup.processes.eventually, for tests in the event loop: the
check may be awaited (a query, an HTTP request) or plain (a state this event loop changes,
which a blocking poll would never let change). For what gives no event to wait on."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def eventually_async(
    check: Callable[[], Awaitable[T | None]], within: float, what: str, every: float = 0.05
) -> T: ...


@overload
async def eventually_async(check: Callable[[], T | None], within: float, what: str, every: float = 0.05) -> T: ...


async def eventually_async(check: Callable[[], Any], within: float, what: str, every: float = 0.05) -> Any:
    """Call (and await, if it gives an awaitable) `check` until it returns something other than
    None (or False), at most `within` seconds, yielding to the event loop in between; raise
    TimeoutError naming `what` after that."""
    deadline = time.monotonic() + within
    while True:
        found = check()
        if inspect.isawaitable(found):
            found = await found
        if found is not None and found is not False:
            return found
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {within:g} s")
        await asyncio.sleep(every)
