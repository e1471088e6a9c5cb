"""Bearer tokens: who is calling (`authorize`), and the per-instance cache that keeps a token
check off the database on the hot path.

Tokens are stored as sha256 digests only (write_tokens). A revocation (sql/functions.sql
revoke_token) NOTIFYs `write_tokens` with the token's id: every instance drops it from its
cache at once (`TokenCache.forget`). An instance whose listener was disconnected forgets
everything when it reconnects, and cached entries expire after TOKEN_CACHE_SECONDS anyway.

Failing is cheap and limited (docs/design.md: the edge). An unknown token is cached as unknown
for UNKNOWN_TOKEN_SECONDS; registering or creating a token NOTIFYs `write_tokens` too
(payload `created:<id>:<sha256 hex>`), and every instance then forgets what it had cached as
unknown, so a new token works at once. Each instance also knows the digests of all live tokens
(`live`: read when its listener connects, kept by the notifications). A client address with
`failures_per_minute` failed authentications in the current minute is answered 429 with
Retry-After, without a query, for any token that is not live: a valid token from that address
keeps working. The address
is the connection's peer; on the unix socket (nginx's only way in, deploy/vm1-api) it is the
last X-Forwarded-For entry, the one nginx appended (`$proxy_add_x_forwarded_for`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass, field

from asyncpg import Connection
from starlette.requests import Request

from travel.database import QUERIES, Database
from travel.errors import Problem

TOKEN_CACHE_SECONDS = 30.0  # the bound on a revocation when an instance's listener is down
TOKEN_CACHE_ENTRIES = 10_000  # unknown tokens are cached too: bound the memory
UNKNOWN_TOKEN_SECONDS = 10.0  # an unknown token's cached answer (a new one is heard of by NOTIFY)
REVOCATIONS_CHANNEL = "write_tokens"  # revoke_token() NOTIFYs the token id here; new tokens `created`
CREATED = "created"  # a `write_tokens` payload: `created:<token id>:<sha256 hex>`
LIVE_TOKENS_SQL = "SELECT token_hash, token_id FROM write_tokens WHERE revoked_at IS NULL"
FAILURE_WINDOW_SECONDS = 60.0
FAILURE_ADDRESSES = 100_000  # addresses counted in one window: bound the memory
DEFAULT_FAILURES_PER_MINUTE = 30
TOKEN_BY_HASH = QUERIES["token-by-hash"]


@dataclass(frozen=True, slots=True)
class Caller:
    token_id: int
    role: str
    recharge_point_id: int | None


def digest(token: str) -> bytes:
    """What the database and the cache know a token by."""
    return hashlib.sha256(token.encode()).digest()


def new_token() -> tuple[str, bytes]:
    """A fresh secret (256 random bits) and its digest."""
    token = secrets.token_urlsafe(32)
    return token, digest(token)


class TooManyFailures(Problem):
    def __init__(self, retry_after: int) -> None:
        super().__init__(
            429,
            "TOO_MANY_FAILED_AUTHENTICATIONS",
            "too many failed authentications from this address: try again later",
            headers={"Retry-After": str(retry_after)},
        )


@dataclass
class FailedAuthentications:
    """Failed authentications per client address in the current minute (one window for all:
    O(1) per failure, and forgotten whole each minute)."""

    limit: int = DEFAULT_FAILURES_PER_MINUTE
    window_start: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def retry_after(self, address: str, now: float) -> int:
        """Seconds until `address` may fail again (0: it may now)."""
        if now - self.window_start >= FAILURE_WINDOW_SECONDS:
            self.window_start = now
            self.counts.clear()
            return 0
        if self.counts.get(address, 0) < self.limit:
            return 0
        return max(1, math.ceil(self.window_start + FAILURE_WINDOW_SECONDS - now))

    def failed(self, address: str) -> None:
        if len(self.counts) >= FAILURE_ADDRESSES:
            self.counts.clear()
        self.counts[address] = self.counts.get(address, 0) + 1


@dataclass
class TokenCache:
    """Known tokens by sha256, kept briefly so that a write costs one database round trip;
    unknown ones too, more briefly; and the failures per client address."""

    entries: dict[bytes, tuple[float, Caller | None]] = field(default_factory=dict)
    # Bumped by every revocation and creation: a lookup that started before one does not fill the cache.
    generation: int = 0
    failures: FailedAuthentications = field(default_factory=FailedAuthentications)
    live: dict[bytes, int] = field(default_factory=dict)  # every live token's digest: its id

    async def caller(self, database: Database, token: str, address: str = "") -> Caller | None:
        """The token's caller (None: unknown or revoked); raises TooManyFailures for an address
        past its failures, unless the token is live."""
        key = digest(token)
        now = time.monotonic()
        cached = self.entries.get(key)
        if cached is not None and cached[0] > now:
            if cached[1] is None:
                self.fail(address, now)
            return cached[1]
        if (cached is None or cached[1] is None) and key not in self.live:  # a failure may cost no query
            retry_after = self.failures.retry_after(address, now)
            if retry_after:
                raise TooManyFailures(retry_after)
        generation = self.generation
        row = await database.run(TOKEN_BY_HASH, key)
        found = None if row is None else Caller(row["token_id"], row["role"], row["recharge_point_id"])
        if generation == self.generation:
            if len(self.entries) > TOKEN_CACHE_ENTRIES:
                self.entries.clear()
            self.entries[key] = (now + (TOKEN_CACHE_SECONDS if found else UNKNOWN_TOKEN_SECONDS), found)
        if found is None:
            self.failures.failed(address)
        return found

    def fail(self, address: str, now: float) -> None:
        """A failure that cost nothing still counts, and is refused once the address is past its limit."""
        retry_after = self.failures.retry_after(address, now)
        if retry_after:
            raise TooManyFailures(retry_after)
        self.failures.failed(address)

    def forget(self, payload: str | int) -> None:
        """A `write_tokens` notification: drop a revoked token (its id), or, for a new token
        (`created:<id>:<hex>`), everything cached as unknown."""
        self.generation += 1
        kind, _, created = str(payload).partition(":")
        if kind == CREATED:
            for key in [key for key, (_, caller) in self.entries.items() if caller is None]:
                del self.entries[key]
            token_id, _, hex_digest = created.partition(":")
            if hex_digest:
                self.live[bytes.fromhex(hex_digest)] = int(token_id)
            return
        revoked = int(payload)
        for key in [key for key, (_, caller) in self.entries.items() if caller and caller.token_id == revoked]:
            del self.entries[key]
        for key in [key for key, token_id in self.live.items() if token_id == revoked]:
            del self.live[key]

    def forget_all(self) -> None:
        """After the listener (re)connects: revocations may have gone unheard meanwhile."""
        self.generation += 1
        self.entries.clear()

    async def catch_up(self, conn: Connection) -> None:
        """After the listener (re)connects, on its connection: forget everything cached, and
        read which tokens are live (creations and revocations may have gone unheard)."""
        self.forget_all()
        self.live = {bytes(row[0]): row[1] for row in await conn.fetch(LIVE_TOKENS_SQL)}


def client_address(request: Request) -> str:
    """Who failures are counted against: the peer's address; on the unix socket (whose only
    peer is nginx) the address nginx appended to X-Forwarded-For."""
    client = request.scope.get("client")
    if client:
        return str(client[0])
    forwarded = request.headers.get("x-forwarded-for", "")
    return forwarded.rpartition(",")[2].strip() or "unix"


async def authorize(request: Request, *roles: str) -> Caller:
    """The caller behind `Authorization: Bearer`, if its role is one of `roles` (admin always)."""
    given = request.headers.getlist("authorization")
    if len(given) > 1:  # which one counts would depend on who reads them: neither does
        raise Problem(401, "UNAUTHORIZED", "send one Authorization header", headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = (given[0] if given else "").partition(" ")
    token = token.strip()
    tokens: TokenCache = request.state.tokens
    if not hmac.compare_digest(scheme.lower().encode(), b"bearer") or not token:
        tokens.fail(client_address(request), time.monotonic())
        raise Problem(401, "UNAUTHORIZED", "send Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})
    caller = await tokens.caller(request.state.db, token, client_address(request))
    if caller is None:
        raise Problem(
            401,
            "UNAUTHORIZED",
            "unknown or revoked token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    if caller.role != "admin" and caller.role not in roles:
        raise Problem(403, "FORBIDDEN", f"a {caller.role} token cannot do this")
    return caller
