"""Bearer tokens: who is calling (`authorize`), and the per-instance cache that keeps a token
check off the database on the hot path.

Tokens are stored as sha256 digests only (write_tokens). A revocation (sql/functions.sql
revoke_token) NOTIFYs `write_tokens` with the token's id: every instance drops it from its
cache at once (`TokenCache.forget`). An instance whose listener was disconnected forgets
everything when it reconnects, and cached entries expire after TOKEN_CACHE_SECONDS anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

from starlette.requests import Request

from travel.database import QUERIES, Database
from travel.errors import Problem

TOKEN_CACHE_SECONDS = 30.0  # the bound on a revocation when an instance's listener is down
TOKEN_CACHE_ENTRIES = 10_000  # unknown tokens are cached too: bound the memory
REVOCATIONS_CHANNEL = "write_tokens"  # revoke_token() NOTIFYs the token id here
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


@dataclass
class TokenCache:
    """Known tokens by sha256, kept briefly so that a write costs one database round trip."""

    entries: dict[bytes, tuple[float, Caller | None]] = field(default_factory=dict)
    # Bumped by every revocation: a lookup that started before one does not fill the cache.
    generation: int = 0

    async def caller(self, database: Database, token: str) -> Caller | None:
        key = digest(token)
        now = time.monotonic()
        cached = self.entries.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        generation = self.generation
        row = await database.run(TOKEN_BY_HASH, key)
        found = None if row is None else Caller(row["token_id"], row["role"], row["recharge_point_id"])
        if generation == self.generation:
            if len(self.entries) > TOKEN_CACHE_ENTRIES:
                self.entries.clear()
            self.entries[key] = (now + TOKEN_CACHE_SECONDS, found)
        return found

    def forget(self, token_id: str | int) -> None:
        """Drop a revoked token (the payload of a `write_tokens` notification)."""
        revoked = int(token_id)
        self.generation += 1
        for key in [key for key, (_, caller) in self.entries.items() if caller and caller.token_id == revoked]:
            del self.entries[key]

    def forget_all(self) -> None:
        """After the listener (re)connects: revocations may have gone unheard meanwhile."""
        self.generation += 1
        self.entries.clear()


async def authorize(request: Request, *roles: str) -> Caller:
    """The caller behind `Authorization: Bearer`, if its role is one of `roles` (admin always)."""
    given = request.headers.getlist("authorization")
    if len(given) > 1:  # which one counts would depend on who reads them: neither does
        raise Problem(401, "UNAUTHORIZED", "send one Authorization header", headers={"WWW-Authenticate": "Bearer"})
    scheme, _, token = (given[0] if given else "").partition(" ")
    token = token.strip()
    if not hmac.compare_digest(scheme.lower().encode(), b"bearer") or not token:
        raise Problem(401, "UNAUTHORIZED", "send Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})
    tokens: TokenCache = request.state.tokens
    caller = await tokens.caller(request.state.db, token)
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
