"""The "phone" channel: the outbox delivers escalation calls and SMS through
it, and it picks the provider for each number.

Calls and SMS are outbox rows like every other message, so a page written by
the sweep survives a crash and is retried. Each delivery first records a
phone_call row (keyed by the outbox row, so a retried delivery does not ring
twice once a provider accepted the call) and enforces, in this order:

1. the per-person throttle: at most `max_calls` calls in `call_window`
   (GoAlert's 3 in 15 minutes), at most `max_sms` SMS in `sms_window`;
2. the providers that reach the number, in [phone] providers order — a
   provider's `countries` (+86 -> the domestic ones, others -> Twilio);
3. each provider's own per-callee limits (Aliyun: 1 a minute, 5 an hour, 20 a
   day per number), counted from our own rows *before* the call, so a call is
   never sent to be refused; a provider at its limit, or refusing the call,
   passes it to the next one;
4. none left: an SMS instead (`sms_fallback`), through the first provider
   that reaches the number and sends SMS.

Nothing is dropped silently: every limit hit, refusal and fallback is kept on
the phone_call row (`error`) and in the ticket's audit trail (a "phone" event
with the reason). An outage (a retryable error) is retried by the outbox.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import case, func, update
from sqlmodel import select

from bot.channel import Channel, DeliveryError, EventSink, Wiring, current_outbox_id, register
from bot.events import Address, Call, Outbound, Sms
from bot.texts import t
from escalation.config import PhoneConfig, fmt_duration, parse_limit, phone_providers
from escalation.phones import CallRequest, PhoneError, PhoneProvider, e164, region_of
from storage.db import Database
from storage.models import Person, PhoneCall, TicketEvent
from storage.types import utcnow

log = logging.getLogger(__name__)

CHANNEL = "phone"
AUDIT_ACTION = "phone"  # TicketEvent.action of a call or SMS that could not go as asked
# Calls that did not ring do not count against the throttles.
_NOT_COUNTED = ("throttled", "failed")


class Route:
    """A provider with the countries it reaches and its per-callee limits."""

    def __init__(self, provider: PhoneProvider, countries: list[str], limits: list[str]):
        self.provider = provider
        self.countries = {c.upper() for c in countries}
        self.limits = [parse_limit(x) for x in limits]

    @property
    def name(self) -> str:
        return self.provider.name

    def reaches(self, number: str) -> bool:
        return not self.countries or region_of(number) in self.countries


def build_routes(config) -> list[Route]:
    """The configured providers (bot.config.Config), in [phone] providers order."""
    routes = []
    for name, section in phone_providers(config):
        if name == "aliyun":
            from escalation.phones.aliyun import AliyunProvider

            provider: PhoneProvider = AliyunProvider(section)
        elif name == "tencent":
            from escalation.phones.tencent import TencentProvider

            provider = TencentProvider(section)
        else:
            from escalation.phones.twilio import TwilioProvider

            provider = TwilioProvider(section, config.server.public_url)
        routes.append(Route(provider, section.countries, section.limits))
    return routes


@register("phone", PhoneConfig)
class PhoneChannel(Channel):
    """Delivers Call and Sms messages; people's addresses are their person ids."""

    name = CHANNEL

    @classmethod
    def build(cls, section: PhoneConfig, wiring: Wiring) -> PhoneChannel | None:
        """None when no provider (Twilio, Aliyun, Tencent) is configured."""
        routes = build_routes(wiring.config)
        return cls(section, wiring.sink, wiring.db, routes) if routes else None

    def __init__(self, config: PhoneConfig, sink: EventSink, db: Database, routes: list[Route]):
        super().__init__(sink)
        self.config = config
        self.db = db
        self.lines = routes  # (not `routes`: Channel.routes() are its HTTP routes)

    async def start(self) -> None:
        for r in self.lines:
            await r.provider.start()

    async def close(self) -> None:
        for r in self.lines:
            await r.provider.close()

    async def send(self, to: Address, message: Outbound, ref: dict | None) -> dict | None:
        if isinstance(message, Call):
            await self._call(message)
        elif isinstance(message, Sms):
            await self._sms(message, dict(message.fields))
        else:
            raise DeliveryError(f"the phone channel places calls and sends SMS, not {type(message).__name__}",
                                retryable=False)
        return None

    # ---- bookkeeping ----------------------------------------------------------

    async def _record(self, kind: str, message: Call | Sms, limit: int,
                      window: timedelta) -> tuple[PhoneCall, bool]:
        """This delivery's phone_call row and whether it is new: the existing one on
        a retry, else a new one, "throttled" when the person had `limit` in `window`
        already."""
        outbox_id = current_outbox_id.get()
        now = utcnow()
        async with self.db.session() as s:
            if outbox_id is not None:
                row = (await s.exec(select(PhoneCall).where(PhoneCall.outbox_id == outbox_id,
                                                            PhoneCall.kind == kind))).first()
                if row is not None:
                    return row, False
            status, error = "placing", None
            if message.person_id:
                # One throttle decision at a time per person, across processes.
                await s.exec(select(Person).where(Person.id == message.person_id).with_for_update())
                recent = (await s.exec(select(func.count()).select_from(PhoneCall).where(
                    PhoneCall.person_id == message.person_id, PhoneCall.kind == kind,
                    PhoneCall.status.not_in(_NOT_COUNTED), PhoneCall.created_at > now - window))).one()
                if recent >= limit:
                    status = "throttled"
                    error = f"{recent} {kind}s to this person in {fmt_duration(window)} (max {limit})"
            row = PhoneCall(kind=kind, person_id=message.person_id or "", ticket_id=message.ticket_id,
                            to_number=e164(message.to, self.config.default_country_code),
                            outbox_id=outbox_id, status=status, error=error, created_at=now, updated_at=now,
                            chain=getattr(message, "chain", None), step=getattr(message, "step", None),
                            fence=getattr(message, "fence", None))
            s.add(row)
            await s.flush()
        return row, True

    async def _update(self, row_id: int, **values) -> None:
        async with self.db.session() as s:
            await s.exec(update(PhoneCall).where(PhoneCall.id == row_id).values(updated_at=utcnow(), **values))

    async def _limited(self, route: Route, row: PhoneCall) -> str | None:
        """Why `route` must not call row's number now (its per-callee limits), or None.
        Counts this provider's calls to the number that rang or may ring."""
        if not route.limits:
            return None
        now = utcnow()
        async with self.db.session() as s:
            for limit, window in route.limits:
                n = (await s.exec(select(func.count()).select_from(PhoneCall).where(
                    PhoneCall.kind == "call", PhoneCall.provider == route.name,
                    PhoneCall.to_number == row.to_number, PhoneCall.id != row.id,
                    PhoneCall.status.not_in(_NOT_COUNTED), PhoneCall.created_at > now - window))).one()
                if n >= limit:
                    return f"{route.name}: per-callee limit {limit}/{fmt_duration(window)} reached"
        return None

    async def _audit(self, row: PhoneCall, status: str, reasons: list[str], via: str | None = None) -> None:
        """A "phone" event in the ticket's audit trail: what went out instead, and why."""
        if row.ticket_id is None:
            return
        async with self.db.session() as s:
            s.add(TicketEvent(ticket_id=row.ticket_id, action=AUDIT_ACTION, actor_id=None,
                              actor_name=t("escalation.engine.actor"), channel=CHANNEL, at=utcnow(),
                              detail={"kind": row.kind, "person": row.person_id, "status": status,
                                      "via": via, "reasons": reasons}))

    # ---- calls -----------------------------------------------------------------

    async def _call(self, message: Call) -> None:
        row, new = await self._record("call", message, self.config.max_calls, self.config.call_window)
        if row.sid:
            return  # placed by an earlier delivery of this outbox row
        fields = dict(message.fields)
        if row.status in ("throttled", "failed"):
            # Throttled now, or an earlier delivery gave up on the call (and said why).
            reasons = [row.error] if new and row.error else []
            decided = not new
        else:
            placed, reasons = await self._place(row, message.text, fields)
            if placed:
                return
            decided = False
        if not decided:
            log.warning("call to %s (%s) for ticket %s not placed: %s%s", row.person_id, row.to_number,
                        row.ticket_id, "; ".join(reasons),
                        ": sending an SMS instead" if self.config.sms_fallback else "")
            await self._audit(row, "sms_instead" if self.config.sms_fallback else "not_placed", reasons)
        if not self.config.sms_fallback:
            raise DeliveryError("; ".join(reasons) or (row.error or "call not placed"), retryable=False)
        await self._sms(Sms(message.to, t("voice.sms", text=message.text), message.person_id, message.ticket_id,
                            message.fields), fields)

    async def _place(self, row: PhoneCall, text: str, fields: dict[str, str]) -> tuple[bool, list[str]]:
        """Try the providers that reach the number, in order; (placed, why others
        did not). An outage raises a retryable DeliveryError (the outbox retries);
        when none placed it, the row is "failed" with the reasons."""
        reasons: list[str] = []
        routes = [r for r in self.lines if r.reaches(row.to_number)]
        if not routes:
            reasons.append(f"no provider reaches {row.to_number} ({region_of(row.to_number) or 'unknown'})")
        for route in routes:
            why = await self._limited(route, row)
            if why:
                reasons.append(why)
                continue
            await self._update(row.id, provider=route.name)
            request = CallRequest(row.id, row.to_number, text, fields, int(self.config.ring_timeout.total_seconds()))
            try:
                sid = await route.provider.call(request)
            except PhoneError as e:
                if e.retryable:
                    await self._update(row.id, error=str(e)[:500])
                    raise DeliveryError(str(e), retryable=True, retry_after=e.retry_after) from e
                reasons.append(str(e))
                continue
            # The call's own callbacks may have written its status already: keep theirs.
            await self._update(row.id, sid=sid, error="; ".join(reasons)[:500] or None,
                               status=case((PhoneCall.status == "placing", "sent"), else_=PhoneCall.status))
            if reasons:
                await self._audit(row, "sent", reasons, via=route.name)
            log.info("called %s (%s) for ticket %s via %s: %s", row.person_id, row.to_number, row.ticket_id,
                     route.name, sid)
            return True, reasons
        await self._update(row.id, status="failed", error="; ".join(reasons)[:500])
        return False, reasons

    async def _sms(self, message: Sms, fields: dict[str, str]) -> None:
        row, new = await self._record("sms", message, self.config.max_sms, self.config.sms_window)
        if row.sid:
            return
        if row.status == "throttled":
            if new:
                log.warning("SMS to %s for ticket %s throttled (%d in %s): not sent", row.person_id,
                            row.ticket_id, self.config.max_sms, self.config.sms_window)
                await self._audit(row, "throttled", [row.error or "throttled"])
            return
        routes = [r for r in self.lines if r.provider.can_sms and r.reaches(row.to_number)]
        reasons: list[str] = []
        for route in routes:
            await self._update(row.id, provider=route.name)
            try:
                sid = await route.provider.sms(row.to_number, message.text, fields)
            except PhoneError as e:
                if e.retryable:
                    await self._update(row.id, error=str(e)[:500])
                    raise DeliveryError(str(e), retryable=True, retry_after=e.retry_after) from e
                reasons.append(str(e))
                continue
            await self._update(row.id, status="sent", sid=sid, error="; ".join(reasons)[:500] or None)
            return
        if not routes:
            reasons.append(f"no provider sends SMS to {row.to_number}")
        await self._update(row.id, status="failed", error="; ".join(reasons)[:500])
        await self._audit(row, "failed", reasons)
        raise DeliveryError("; ".join(reasons), retryable=False)

