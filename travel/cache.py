"""Cache-aside on Redis: coalesced reads, generation-guarded fills, one-trip invalidation.

Read: the keys asked for during one event-loop tick go to Redis as one MGET (each key with
its generation), and while an MGET is out the next keys gather for the one after it, so a hit
costs a share of one round trip, a smaller share the busier the service. Miss: `load` reads PostgreSQL and
fills, once for all the concurrent misses of a key that saw the same generation (single
flight: a burst on a cold key is one query, not one per request). The fill stores the value
only if the key's generation is still the one the read saw: a write that committed in
between bumped it, so a slow miss cannot put back the row it read before the write (docs/design.md:
cache-aside). Write: `invalidate` bumps the generations and DELs the keys, in one round trip, after
the commit.

Redis trouble never fails a request: a read that cannot reach Redis is a miss, a fill is
dropped, and `healthy` turns False until Redis answers again. A write whose invalidation
failed must not leave a stale value for when Redis returns: the caller then moves the cache
to a new epoch (a key namespace, kept in PostgreSQL and announced to every instance), and
what was cached before is never read again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

import cachekeys
from travel import PROJECT_ROOT
from travel.observability import metrics

log = logging.getLogger("travel.cache")

# The Lua scripts are the repository's files, read once here; the Go version (go/cache.go)
# reads the same file for its invalidation, so both send one script under one SHA.
REDIS_SCRIPTS_DIR = PROJECT_ROOT / "sql" / "redis"
_BUMP_AND_DELETE = (REDIS_SCRIPTS_DIR / "bump-and-delete.lua").read_text()
_FILL_IF_GENERATION_UNCHANGED = (REDIS_SCRIPTS_DIR / "fill-if-generation-unchanged.lua").read_text()


BYPASS_SECONDS = 0.5
# Reads out at once: past it, lookups gather for the next MGET, so under load a batch holds
# every request that arrived during one round trip (one Redis call for many hits: the read
# side of group commit) instead of one call per event-loop tick.
MAX_FETCHES = 1
# A shared-generation family's value is stored as b"<generation it was filled under>|<value>".
TAG_END = b"|"
# A miss whose MGET went out before a load of its key finished takes that load's answer
# (it only missed the fill by a hair) if it arrives within this long after the load ended.
LOAD_REUSE_SECONDS = 1.0


class Lookup:
    """What a read found: the stored bytes (None on a miss), the generation it saw, and the
    Redis names it read (a fill writes those: an epoch bump in between makes it a no-op).

    A key of a shared-generation family (cachekeys.CachedKey) is `tagged`: its value counts
    only while the generation it was filled under is still the family's."""

    __slots__ = ("generation", "names", "started", "tagged", "value")

    def __init__(self, value: bytes | None, generation: bytes, names: tuple[bytes, bytes], started: float) -> None:
        self.tagged = names[1] != cachekeys.GENERATION_PREFIX + names[0]
        if value is not None and self.tagged:
            filled_under, _, value = value.partition(TAG_END)
            if filled_under != generation:
                value = None
        self.value = value
        self.generation = generation
        self.names = names
        self.started = started  # when the read went out to Redis


class _Load:
    """One PostgreSQL load and fill of a key, shared by the misses that wait for it."""

    __slots__ = ("finished", "task")

    def __init__(self, task: asyncio.Task[bytes]) -> None:
        self.task = task
        self.finished = float("inf")


def connect(
    url: str, *, sentinels: str = "", service: str = "", timeout: float = 0.1, max_connections: int = 32
) -> aioredis.Redis:
    """A client with a bounded pool and short timeouts: Redis is an optimisation, so waiting
    long for it is never worth it. With `sentinels` ("host:port,..."), the primary of
    `service` is found through Sentinel and found again after a failover; `url` then gives
    only the password and database."""
    options = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # A dropped connection (Redis restarted) is retried once; a timeout is not: the
        # request would wait twice as long for an optional answer.
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.005), retries=1, supported_errors=(RedisConnectionError,)),
        "health_check_interval": 5,
    }
    if sentinels:
        parsed = urlsplit(url)
        addresses = [(host, int(port)) for host, port in (address.rsplit(":", 1) for address in sentinels.split(","))]
        sentinel = Sentinel(
            addresses,
            sentinel_kwargs={"socket_timeout": timeout},  # type: ignore[no-untyped-call]
            username=parsed.username or None,
            password=parsed.password,
            db=int(parsed.path.lstrip("/") or 0),
            **options,
        )
        primary: aioredis.Redis = sentinel.master_for(service, max_connections=max_connections)
        return primary
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,  # wait for a free connection at most this long
        **options,
    )
    return aioredis.Redis(connection_pool=pool)


class Cache:
    """The service's view of Redis."""

    def __init__(self, client: aioredis.Redis, epoch: int = 0) -> None:
        self.client = client
        self.epoch = epoch
        self.healthy = True
        self._bypass_until = 0.0  # after a failure, reads skip Redis until then
        self._fill_script = client.register_script(_FILL_IF_GENERATION_UNCHANGED)
        self._invalidate_script = client.register_script(_BUMP_AND_DELETE)
        self._pending: dict[bytes, list[asyncio.Future[Lookup]]] = {}
        self._flush_scheduled = False
        self._fetches: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self._loads: dict[tuple[bytes, bytes], _Load] = {}  # by (Redis name, generation seen)

    # ------------------------------------------------------------------ reads
    def lookup(self, key: bytes) -> asyncio.Future[Lookup]:
        """Look `key` up in the next batch; concurrent lookups of one key share one read.
        Each caller gets a future of its own, so one that goes away cancels only its wait.
        Shortly after a failure the answer is a miss at once, without asking Redis."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Lookup] = loop.create_future()
        if not self.healthy and time.monotonic() < self._bypass_until:
            future.set_result(Lookup(None, b"", self._names(key), time.monotonic()))
            return future
        waiting = self._pending.get(key)
        if waiting is None:
            self._pending[key] = [future]
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        else:
            waiting.append(future)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending and len(self._fetches) < MAX_FETCHES:
            batch, self._pending = self._pending, {}
            task = asyncio.ensure_future(self._fetch(batch))
            self._fetches.add(task)
            task.add_done_callback(self._fetched)

    def _fetched(self, task: asyncio.Task[None]) -> None:
        self._fetches.discard(task)
        self._flush()  # what gathered while the fetches were out goes now, as one batch

    async def _fetch(self, batch: dict[bytes, list[asyncio.Future[Lookup]]]) -> None:
        pairs = [self._names(key) for key in batch]
        values: list[bytes | None] = [None] * (2 * len(pairs))
        sent = time.monotonic()
        try:
            values = cast("list[bytes | None]", await self.client.mget([name for pair in pairs for name in pair]))
            self.healthy = True
        except (TimeoutError, RedisError, OSError) as error:
            self._unhealthy("read", error)
        finally:  # whatever happened, every waiting request gets an answer (a miss at worst)
            for index, waiting in enumerate(batch.values()):
                found = Lookup(values[2 * index], values[2 * index + 1] or b"", pairs[index], sent)
                for future in waiting:
                    if not future.done():
                        future.set_result(found)

    # ------------------------------------------------------------------ misses
    async def load(self, lookup: Lookup, ttl: int, load: Callable[[], Awaitable[bytes]]) -> bytes:
        """What `load()` reads from PostgreSQL for this missed `lookup`, filled into Redis
        before it is returned. Concurrent misses of the key that saw the same generation share
        one load and one fill (a miss that saw a newer generation, after a write, does not),
        and a failed load fails each of them with its error; the next miss loads again."""
        flight = (lookup.names[0], lookup.generation)
        shared = self._loads.get(flight)
        if shared is None or shared.finished <= lookup.started:
            shared = _Load(asyncio.ensure_future(self._load_and_fill(lookup, ttl, load)))
            shared.task.add_done_callback(functools.partial(self._landed, flight, shared))
            self._loads[flight] = shared
        # Shielded: one waiter going away must not cancel the load for the others.
        return await asyncio.shield(shared.task)

    async def _load_and_fill(self, lookup: Lookup, ttl: int, load: Callable[[], Awaitable[bytes]]) -> bytes:
        metrics.CACHE_LOADS.inc()
        body = await load()
        await self.fill(lookup, ttl, body)
        return body

    def _landed(self, flight: tuple[bytes, bytes], shared: _Load, task: asyncio.Task[bytes]) -> None:
        if task.cancelled() or task.exception() is not None:
            self._forget(flight, shared)
            return
        shared.finished = time.monotonic()
        asyncio.get_running_loop().call_later(LOAD_REUSE_SECONDS, self._forget, flight, shared)

    def _forget(self, flight: tuple[bytes, bytes], shared: _Load) -> None:
        if self._loads.get(flight) is shared:
            del self._loads[flight]

    # ------------------------------------------------------------------ fills and writes
    async def fill(self, lookup: Lookup, ttl: int, value: bytes) -> None:
        """Store what a miss read, unless a write bumped the key's generation meanwhile (or
        the epoch moved: the names the read used are then never read again)."""
        if not self.healthy or time.monotonic() - lookup.started > cachekeys.MAX_FILL_AGE:
            return
        if lookup.tagged:
            value = lookup.generation + TAG_END + value
        try:
            await self._fill_script(keys=lookup.names, args=[lookup.generation, ttl, value])
        except (TimeoutError, RedisError, OSError) as error:
            self._unhealthy("fill", error)

    async def invalidate(self, keys: Sequence[bytes]) -> bool:
        """Bump the generations of `keys` and delete them: one script, one round trip
        (cheaper for the client than a five-command pipeline, and atomic).

        Returns False when Redis could not be reached (the caller decides what that costs).
        """
        names = [cachekeys.GENERATION_SEQUENCE, *(name for key in keys for name in self._names(key))]
        try:
            await self._invalidate_script(keys=names, args=[cachekeys.GENERATION_TTL])
            self.healthy = True
            return True
        except (TimeoutError, RedisError, OSError) as error:
            self._unhealthy("invalidate", error)
            return False

    def _names(self, key: bytes) -> tuple[bytes, bytes]:
        """The Redis names of `key` and of its generation, in the current epoch."""
        name = cachekeys.in_epoch(self.epoch, key)
        return name, cachekeys.generation(name)

    async def ping(self) -> bool:
        try:
            await self.client.ping()
            self.healthy = True
        except (TimeoutError, RedisError, OSError) as error:
            self._unhealthy("ping", error)
        return self.healthy

    def _unhealthy(self, operation: str, error: BaseException) -> None:
        metrics.REDIS_ERRORS.labels(operation).inc()
        if self.healthy:
            log.warning("redis %s failed: %s: %s", operation, error.__class__.__name__, error)
        self.healthy = False
        self._bypass_until = time.monotonic() + BYPASS_SECONDS
