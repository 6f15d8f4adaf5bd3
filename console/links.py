"""Signed links: who or what a link is for, until when, and a signature.

A link carries its payload in the clear, signed with HMAC (itsdangerous), so a
changed character or a link made for another person or ticket is refused. The
secret is `[reports] link_secret` when set; otherwise one random secret is made
once and kept in the database, so every process sharing it accepts the others'
links and links survive restarts.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from itsdangerous import BadSignature, URLSafeSerializer

from storage.db import Database
from storage.models import SchemaMeta
from storage.queries import insert_ignore

SECRET_KEY = "link_secret"
CONSOLE = "console"
TRACK = "track"


class LinkRefused(Exception):
    """The link is forged, for another page, or expired; `reason` says which."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason  # forged | expired


@dataclass(frozen=True)
class Grant:
    kind: str
    subject: str  # a person id (console) or a ticket number (tracking)
    expires: datetime


class Links:
    def __init__(self, public_url: str, clock: Callable[[], datetime] | None = None, secret: str | None = None):
        self.public_url = public_url.rstrip("/")
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._secret = secret

    async def load(self, db: Database) -> None:
        """The shared secret from the database, made on first use."""
        if self._secret:
            return
        async with db.session() as s:
            await insert_ignore(s, SchemaMeta, key=SECRET_KEY, value=secrets.token_urlsafe(32))
            self._secret = (await s.get(SchemaMeta, SECRET_KEY)).value

    def _serializer(self, kind: str) -> URLSafeSerializer:
        if not self._secret:
            raise RuntimeError("Links.load() has not run")
        return URLSafeSerializer(self._secret, salt=f"relaydesk-{kind}")

    def token(self, kind: str, subject: str, ttl: timedelta) -> str:
        expires = int((self.clock() + ttl).timestamp())
        return self._serializer(kind).dumps({"s": subject, "e": expires})

    def check(self, kind: str, token: str) -> Grant:
        try:
            data = self._serializer(kind).loads(token)
        except BadSignature:
            raise LinkRefused("forged") from None
        if not isinstance(data, dict) or not isinstance(data.get("s"), str) or not isinstance(data.get("e"), int):
            raise LinkRefused("forged")
        expires = datetime.fromtimestamp(data["e"], timezone.utc)
        if self.clock() >= expires:
            raise LinkRefused("expired")
        return Grant(kind, data["s"], expires)

    def console_url(self, person_id: str, ttl: timedelta) -> str:
        return f"{self.public_url}/console?t={self.token(CONSOLE, person_id, ttl)}"

    def tracking_url(self, number: str, ttl: timedelta) -> str:
        return f"{self.public_url}/track/{self.token(TRACK, number, ttl)}"
