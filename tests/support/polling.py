"""The async twin of travel.startup.processes.eventually, for checks that must be awaited (a
query, an HTTP request): poll until the check gives something, within a bound, else fail
naming what was awaited. For what gives no event to wait on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually_async(
    check: Callable[[], Awaitable[T | None]], within: float, what: str, every: float = 0.05
) -> T:
    """Await `check` until it returns something other than None (or False), at most `within`
    seconds; raise TimeoutError naming `what` after that."""
    deadline = time.monotonic() + within
    while True:
        found = await check()
        if found is not None and found is not False:
            return found
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {within:g} s")
        await asyncio.sleep(every)
