"""Outbound webhooks: subscriptions per system, events signed as the Standard
Webhooks spec says, delivered through the durable outbox.

Every change a subscription asks for becomes an outbox row addressed to that
subscription, written in the same transaction as the change. The outbox
delivers one subscription's rows strictly in order, retries with back-off and
keeps the last error (the delivery log). A receiver's 2xx within
`[webhooks] timeout` counts as delivered; anything else is retried.

Receivers on loopback, private, link-local or reserved addresses are refused
unless `[webhooks] allow_private` is set: a URL is checked when subscribed,
and at every send the resolver drops such addresses, so a name that later
resolves to one (DNS rebinding) is refused too.
"""
from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import re
import secrets
import socket
import uuid
from datetime import datetime
from typing import Literal, Optional
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from pydantic import AnyHttpUrl, BaseModel, Field
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from standardwebhooks.webhooks import Webhook as Signer

from api.config import WebhooksConfig
from api.operations import API
from api.problems import Problem
from api.report import service_report
from api.spec import Context, Reply
from api.tickets import ticket_out
from bot.channel import Channel, DeliveryError, EventSink, register
from bot.core.service import Change
from bot.events import Address, Outbound, Webhook, message_to_dict
from storage.db import Database
from storage.integration import WebhookSubscription
from storage.models import OutboxMessage
from storage.types import utcnow

CHANNEL = "webhook"
# Event types: "ticket.<action>" for every change; "ticket.created" for a new ticket.
EVENT_TYPES = ("ticket.created", "ticket.claim", "ticket.transfer", "ticket.escalate", "ticket.ack",
               "ticket.depart", "ticket.arrive", "ticket.start_repair", "ticket.resolve", "ticket.rate",
               "ticket.reopen", "ticket.cancel", "ticket.note", "ticket.photo", "ticket.external_status",
               "ticket.freeze", "ticket.unfreeze", "ticket.verify_submitted", "ticket.verify_failed",
               "ticket.followup_done")


def event_type(action: str) -> str:
    return "ticket.created" if action == "report" else f"ticket.{action}"


# ---- where a webhook may go (SSRF) ----------------------------------------------


def unsafe_address(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
            or addr.is_reserved or addr.is_unspecified)


def check_url(url: str, allow_private: bool) -> str | None:
    """Why `url` may not receive webhooks, or None when it may (names are checked at send)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "the URL must be http(s)://host/..."
    if parts.username or parts.password:
        return "credentials in the URL are not allowed; verify the signature instead"
    if allow_private:
        return None
    host = parts.hostname
    if host == "localhost" or host.endswith(".localhost"):
        return f"{host} is a loopback address"
    try:
        if unsafe_address(host):
            return f"{host} is a loopback, private or reserved address"
    except ValueError:
        pass  # a name: its addresses are checked when sending
    return None


class PublicResolver(AbstractResolver):
    """The default resolver, minus loopback/private/reserved addresses."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        hosts = [h for h in await self._inner.resolve(host, port, family) if not unsafe_address(h["host"])]
        if not hosts:
            raise OSError(f"{host} resolves only to loopback, private or reserved addresses")
        return hosts

    async def close(self) -> None:
        await self._inner.close()


# ---- sending ----------------------------------------------------------------------


@register("webhooks", WebhooksConfig)
class WebhookChannel(Channel):
    """Delivers outbox rows addressed to a subscription ("group" = its id).

    A "user" address is a reporter known only to another system: nothing is
    sent there, that system follows its tickets through its subscriptions.
    """

    name = CHANNEL
    rate_limited = False  # receivers are other systems, not people

    def __init__(self, config: WebhooksConfig, sink: EventSink, db: Database):
        super().__init__(sink)
        self.config = config
        self.db = db
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(resolver=None if self.config.allow_private else PublicResolver())
        self._http = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(
            total=self.config.timeout.total_seconds()))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def send(self, to: Address, message: Outbound, ref: dict | None) -> dict | None:
        if to.kind == "user":
            return None
        if not isinstance(message, Webhook):
            raise DeliveryError(f"webhook subscriptions receive ticket events, not {message.type}", retryable=False)
        async with self.db.session() as s:
            sub = await s.get(WebhookSubscription, int(to.id))
        if sub is None or not sub.active:
            raise DeliveryError(f"subscription {to.id} was deleted", retryable=False)
        why = check_url(sub.url, self.config.allow_private)
        if why:
            raise DeliveryError(why, retryable=False)
        if self._http is None:
            await self.start()
        body = json.dumps(message.payload, ensure_ascii=False, separators=(",", ":"))
        now = utcnow()
        headers = {
            "content-type": "application/json",
            "webhook-id": message.msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Signer(sub.secret).sign(message.msg_id, now, body),
            "user-agent": "RelayDesk-Webhooks/1",
        }
        try:
            async with self._http.post(sub.url, data=body.encode("utf-8"), headers=headers,
                                       allow_redirects=False) as r:
                if 200 <= r.status < 300:
                    return None
                retry_after = r.headers.get("Retry-After", "")
                raise DeliveryError(f"HTTP {r.status} from {sub.url}",
                                    retry_after=float(retry_after) if re.fullmatch(r"[0-9]{1,6}", retry_after) else None)
        except asyncio.TimeoutError:
            raise DeliveryError(f"no answer from {sub.url} within {self.config.timeout.total_seconds():g}s") from None
        except aiohttp.ClientError as e:
            raise DeliveryError(f"{type(e).__name__}: {e}") from None


# ---- publishing: a listener on every change ----------------------------------------


# Every change of every ticket reads it: built once (building cost as much as running it).
_ACTIVE = (select(WebhookSubscription).where(WebhookSubscription.active.is_(True))
           .order_by(WebhookSubscription.id))


async def _subscriptions(s: AsyncSession, etype: str) -> list[WebhookSubscription]:
    rows = (await s.exec(_ACTIVE)).all()
    return [r for r in rows if etype in r.event_types or "*" in r.event_types]


async def publish(s: AsyncSession, ticket_id: int, etype: str, data: dict) -> int:
    """Queue `etype` for every subscription that wants it; how many were queued."""
    subs = await _subscriptions(s, etype)
    payload = {"type": etype, "timestamp": utcnow().isoformat(), "data": data}
    for sub in subs:
        msg = Webhook(etype, payload, f"msg_{uuid.uuid4().hex}")
        s.add(OutboxMessage(channel=CHANNEL, to_kind="group", to_id=str(sub.id), message=message_to_dict(msg),
                            ticket_id=ticket_id, next_attempt_at=utcnow()))
    return len(subs)


async def on_change(s: AsyncSession, change: Change) -> None:
    """The Notifier's listener: every change a subscription wants, with the ticket as it is now."""
    etype = event_type(change.action)
    if not await _subscriptions(s, etype):
        return
    ticket = change.ticket
    data = {
        "ticket": (await ticket_out(s, ticket)).model_dump(mode="json"),
        "change": {"action": change.action, "from_state": change.from_state, "to_state": change.to_state,
                   "actor": {"id": change.actor.person.id, "name": change.actor.person.name},
                   "via": change.actor.via, "token": change.actor.token,
                   "detail": {k: v for k, v in change.detail.items() if k not in ("via", "token")}},
    }
    if change.action == "resolve":  # the service report rides along with the resolution
        data["report"] = (await service_report(s, ticket)).model_dump(mode="json")
    await publish(s, ticket.id, etype, data)


# ---- the subscription API ----------------------------------------------------------


class SubscriptionIn(BaseModel):
    model_config = {"extra": "forbid"}
    url: AnyHttpUrl = Field(description="where to POST events; public addresses only unless configured")
    event_types: list[Literal[EVENT_TYPES + ("*",)]] = Field(min_length=1, max_length=len(EVENT_TYPES) + 1)  # type: ignore[valid-type]


class SubscriptionOut(BaseModel):
    model_config = {"title": "WebhookSubscription"}
    id: int
    system: str
    url: str
    event_types: list[str]
    active: bool
    created_at: datetime
    secret: Optional[str] = Field(default=None, description="whsec_...; shown only in the answer that created it")


class SubscriptionList(BaseModel):
    items: list[SubscriptionOut]


class Delivery(BaseModel):
    id: int
    event_type: str
    msg_id: str
    status: str = Field(description="pending | sending | sent | failed")
    attempts: int
    last_error: Optional[str] = None
    created_at: datetime
    next_attempt_at: datetime
    sent_at: Optional[datetime] = None


class DeliveryList(BaseModel):
    items: list[Delivery]


def _out(sub: WebhookSubscription, *, secret: bool = False) -> SubscriptionOut:
    return SubscriptionOut(id=sub.id, system=sub.system, url=sub.url, event_types=sub.event_types,
                           active=sub.active, created_at=sub.created_at, secret=sub.secret if secret else None)


async def _own(ctx: Context) -> WebhookSubscription:
    raw = ctx.path["id"]
    sub = await ctx.s.get(WebhookSubscription, int(raw)) if re.fullmatch(r"[0-9]{1,9}", raw) else None
    if sub is None or sub.system != ctx.token.name or not sub.active:
        raise Problem("not-found", f"no webhook subscription {raw} of {ctx.token.name}")
    return sub


@API.route("POST", "/webhooks", summary="Subscribe to ticket events", scope="webhooks:write", tag="webhooks",
           body=SubscriptionIn, responses={201: SubscriptionOut}, problems=("unsafe-url",), idempotency="optional")
async def create_webhook(ctx: Context, body: SubscriptionIn) -> Reply:
    """Events are POSTed as JSON with webhook-id, webhook-timestamp and webhook-signature headers
    (Standard Webhooks); verify them with the returned secret."""
    url = str(body.url)
    why = check_url(url, ctx.runtime.config.webhooks.allow_private)
    if why:
        raise Problem("unsafe-url", why)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    sub = WebhookSubscription(system=ctx.token.name, url=url, event_types=sorted(set(body.event_types)), secret=secret)
    ctx.s.add(sub)
    await ctx.s.flush()
    return Reply(201, _out(sub, secret=True))


@API.route("GET", "/webhooks", summary="This system's webhook subscriptions", scope="webhooks:write",
           tag="webhooks", responses={200: SubscriptionList})
async def list_webhooks(ctx: Context) -> Reply:
    rows = (await ctx.s.exec(select(WebhookSubscription).where(WebhookSubscription.system == ctx.token.name,
                                                               WebhookSubscription.active.is_(True))
                             .order_by(WebhookSubscription.id))).all()
    return Reply(200, SubscriptionList(items=[_out(r) for r in rows]))


@API.route("DELETE", "/webhooks/{id}", summary="Unsubscribe", scope="webhooks:write", tag="webhooks",
           responses={204: None}, problems=("not-found",))
async def delete_webhook(ctx: Context) -> Reply:
    """Deliveries not yet made are dropped (marked failed with the reason)."""
    sub = await _own(ctx)
    sub.active = False
    ctx.s.add(sub)
    return Reply(204)


@API.route("GET", "/webhooks/{id}/deliveries", summary="A subscription's delivery log, newest first",
           scope="webhooks:write", tag="webhooks", responses={200: DeliveryList}, problems=("not-found",))
async def webhook_deliveries(ctx: Context) -> Reply:
    sub = await _own(ctx)
    rows = (await ctx.s.exec(select(OutboxMessage).where(OutboxMessage.channel == CHANNEL,
                                                         OutboxMessage.to_kind == "group",
                                                         OutboxMessage.to_id == str(sub.id))
                             .order_by(OutboxMessage.id.desc()).limit(200))).all()
    return Reply(200, DeliveryList(items=[Delivery(
        id=r.id, event_type=r.message.get("event_type", ""), msg_id=r.message.get("msg_id", ""), status=r.status,
        attempts=r.attempts, last_error=r.last_error, created_at=r.created_at, next_attempt_at=r.next_attempt_at,
        sent_at=r.sent_at) for r in rows]))
