"""API tokens: created on the command line, shown once, stored as a hash.

A token is "rdk_" and 43 random URL-safe characters (256 bits): a plain SHA-256
is enough to store it (nothing to brute-force), and lets a request find its
token with one indexed lookup. Scopes say what a token may do; each route
names the scope it needs.
"""
from __future__ import annotations

import hashlib
import math
import secrets
import time
from dataclasses import dataclass

from sqlmodel import select

from storage.db import Database
from storage.integration import ApiToken
from storage.types import utcnow

PREFIX = "rdk_"
SCOPES: dict[str, str] = {
    "tickets:read": "read tickets, their events, systems, reports",
    "tickets:write": "create tickets and act on them",
    "status:write": "report an external system's state of a ticket",
    "directory:read": "read people and teams",
    "webhooks:write": "manage webhook subscriptions and read their delivery log",
}


class TokenError(ValueError):
    """A token command given bad arguments; the message names the problem."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_scopes(text: str) -> list[str]:
    scopes = sorted({s.strip() for s in text.split(",") if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise TokenError(f"unknown scope {unknown[0]!r}" if unknown else "no scopes given"
                         + f" (scopes: {', '.join(SCOPES)})")
    return scopes


async def create_token(db: Database, name: str, scopes: list[str]) -> tuple[str, ApiToken]:
    """A new token for system `name`: the secret (shown once) and its row."""
    name = name.strip()
    if not name or not name.replace("-", "").replace("_", "").isalnum() or len(name) > 64:
        raise TokenError("the name is letters, digits, - and _ (at most 64), e.g. crm")
    secret = PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, token_hash=hash_token(secret), prefix=secret[:10], scopes=scopes)
    async with db.session() as s:
        s.add(row)
    return secret, row


async def list_tokens(db: Database) -> list[ApiToken]:
    async with db.session() as s:
        return list((await s.exec(select(ApiToken).order_by(ApiToken.id))).all())


async def revoke_token(db: Database, ref: str) -> list[ApiToken]:
    """Revoke by id, name (all of that system's tokens) or the shown prefix."""
    async with db.session() as s:
        rows = (await s.exec(select(ApiToken).where(ApiToken.revoked_at.is_(None)))).all()
        hits = [r for r in rows if str(r.id) == ref or r.name == ref or (len(ref) >= 8 and r.prefix.startswith(ref))]
        for r in hits:
            r.revoked_at = utcnow()
            s.add(r)
    return hits


async def find_token(db: Database, secret: str) -> ApiToken | None:
    async with db.session() as s:
        return (await s.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))).first()


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per API token, in this process: `burst` requests at once,
    refilled at `rate` per second. Answers how long to wait when empty."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[int, _Bucket] = {}

    def take(self, key: int) -> float:
        """0 when the request may go now, else the seconds until it may."""
        now = self.clock()
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(float(self.burst), now)
        b.tokens = min(float(self.burst), b.tokens + (now - b.at) * self.rate)
        b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / self.rate

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))
