"""Tables of the integration surface: API tokens, idempotency records, external
references, webhook subscriptions, other systems' states and ticket freezes.

Registered with the same metadata as storage/models.py (storage/db.py imports
this module), so `Database.init` creates them with the rest.
"""
from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel

from storage.models import _ts
from storage.types import utcnow


class ApiToken(SQLModel, table=True):
    """A bearer token of one external system; only its SHA-256 is stored."""

    __tablename__ = "api_token"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(index=True)  # the system it belongs to, e.g. "crm"
    token_hash: str = Field(unique=True)
    prefix: str  # the first characters, to recognise a token in `api-token list`
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts(nullable=False, default=utcnow)
    revoked_at: Optional[datetime] = _ts()
    last_used_at: Optional[datetime] = _ts()


class ApiIdempotency(SQLModel, table=True):
    """The answer given to a request with an Idempotency-Key, written in the same
    transaction as what the request changed: a repeat gets the same answer."""

    __tablename__ = "api_idempotency"
    token_name: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    method: str
    path: str
    request_hash: str
    status: int
    body: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts(nullable=False, default=utcnow)


class ExternalRef(SQLModel, table=True):
    """A ticket's id in another system (one ticket, one id per system)."""

    __tablename__ = "external_ref"
    system: str = Field(primary_key=True)
    external_id: str = Field(primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    created_at: datetime = _ts(nullable=False, default=utcnow)


class WebhookSubscription(SQLModel, table=True):
    """Where a system wants to hear of ticket events, and the secret that signs them."""

    __tablename__ = "webhook_subscription"
    id: Optional[int] = Field(default=None, primary_key=True)
    system: str = Field(index=True)
    url: str
    event_types: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    secret: str  # "whsec_" + base64, as the Standard Webhooks spec writes it
    active: bool = True
    created_at: datetime = _ts(nullable=False, default=utcnow)


class ExternalStatus(SQLModel, table=True):
    """The last state another system reported for a ticket, with that system's own time."""

    __tablename__ = "external_status"
    ticket_id: int = Field(foreign_key="ticket.id", primary_key=True)
    system: str = Field(primary_key=True)
    external_state: str
    mapped_state: Optional[str] = None  # RelayDesk's state it maps to (None: unmapped)
    at: datetime = _ts(nullable=False)  # when the system says the state changed
    received_at: datetime = _ts(nullable=False, default=utcnow)


class TicketFreeze(SQLModel, table=True):
    """A ticket held still because systems contradict each other; a lead lifts it."""

    __tablename__ = "ticket_freeze"
    __table_args__ = (Index("ix_ticket_freeze_at", "frozen_at"),)
    ticket_id: int = Field(foreign_key="ticket.id", primary_key=True)
    reason: str
    systems: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    frozen_at: datetime = _ts(nullable=False, default=utcnow)
