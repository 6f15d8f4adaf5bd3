"""Database tables.

Times are timezone-aware UTC. JSON columns hold small documents only
(identities, event details, outbound messages).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from storage.types import UTCDateTime, utcnow

SCHEMA_VERSION = 2


def _ts(*, index: bool = False, nullable: bool = True, default=None) -> Any:
    kw: dict[str, Any] = {"sa_type": UTCDateTime, "nullable": nullable, "index": index}
    if default is not None:
        kw["default_factory"] = default
    else:
        kw["default"] = None
    return Field(**kw)


class SchemaMeta(SQLModel, table=True):
    __tablename__ = "schema_meta"
    key: str = Field(primary_key=True)
    value: str


class Person(SQLModel, table=True):
    """Somebody the bot talks to: customer, engineer, lead, director, manager."""

    __tablename__ = "person"
    id: str = Field(primary_key=True)
    name: str
    role: str = Field(index=True)
    team: Optional[str] = Field(default=None, index=True)
    region: Optional[str] = None
    skills: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    phone: Optional[str] = None
    active: bool = True
    created_at: datetime = _ts(nullable=False, default=utcnow)


class Identity(SQLModel, table=True):
    """A person's user id on one platform (WeCom userid, Feishu open_id, ...)."""

    __tablename__ = "identity"
    platform: str = Field(primary_key=True)
    external_id: str = Field(primary_key=True)
    person_id: str = Field(foreign_key="person.id", index=True)


class DailyCounter(SQLModel, table=True):
    """Last ticket sequence number handed out per day (YYYYMMDD)."""

    __tablename__ = "daily_counter"
    day: str = Field(primary_key=True)
    last: int = 0


class Ticket(SQLModel, table=True):
    __tablename__ = "ticket"
    __table_args__ = (
        Index("ix_ticket_open_assignee", "assignee_id", "state"),
        Index("ix_ticket_reporter_state", "reporter_id", "state"),
        # An incident's open ticket: same category and place, opened recently.
        Index("ix_ticket_incident", "category", "location", "created_at"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    number: str = Field(unique=True)
    state: str = Field(index=True)
    category: str
    category_name: str
    priority: str
    summary: str
    impact: Optional[str] = None
    serial: Optional[str] = None
    location: Optional[str] = None
    error_code: Optional[str] = None
    phone: Optional[str] = None
    evidence: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    reporter_id: str = Field(foreign_key="person.id")
    # Where the customer reported, so every status change goes back there.
    reporter_channel: str
    reporter_conv_kind: str  # "user" | "group"
    reporter_conv_id: str
    team: Optional[str] = None
    assignee_id: Optional[str] = Field(default=None, foreign_key="person.id")
    resolution: Optional[str] = None
    rating: Optional[int] = None
    escalation_level: int = 0
    linked_reports: int = 0  # other people's reports of the same incident (LinkedReport), not split off
    created_at: datetime = _ts(nullable=False, default=utcnow)
    updated_at: datetime = _ts(nullable=False, default=utcnow)
    claimed_at: Optional[datetime] = _ts()
    resolved_at: Optional[datetime] = _ts()
    closed_at: Optional[datetime] = _ts()
    respond_by: datetime = _ts(nullable=False)
    resolve_by: datetime = _ts(nullable=False)
    # Next escalation time; the escalation sweep reads this index.
    next_escalation_at: Optional[datetime] = _ts(index=True)


class LinkedReport(SQLModel, table=True):
    """Somebody else's report of an incident that already has an open ticket.

    The reporter is told that ticket's number and every later update; an
    engineer can split the report into a ticket of its own (`split_ticket_id`).
    """

    __tablename__ = "linked_report"
    id: Optional[int] = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    person_id: str = Field(foreign_key="person.id")
    channel: str
    conv_kind: str  # "user" | "group"
    conv_id: str
    text: str
    created_at: datetime = _ts(nullable=False, default=utcnow)
    split_ticket_id: Optional[int] = None


class CardRefresh(SQLModel, table=True):
    """A ticket whose cards are to be brought up to date once `due_at` comes.

    An incident burst links dozens of reports to one ticket within seconds, and
    each changes its cards ("+N 人报告"); updating every card once per report
    would queue a card update per holder each time when only the last is ever
    seen. A linked report leaves this row instead (one per ticket), and the
    inbox worker updates the cards once, shortly after. A row, not a timer in
    memory: after a restart the cards are still brought up to date.
    """

    __tablename__ = "card_refresh"
    ticket_id: int = Field(primary_key=True, foreign_key="ticket.id")
    due_at: datetime = _ts(nullable=False, index=True)


class TicketEvent(SQLModel, table=True):
    """Append-only audit trail: database triggers refuse UPDATE and DELETE."""

    __tablename__ = "ticket_event"
    id: Optional[int] = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    action: str
    actor_id: Optional[str] = None
    actor_name: str
    channel: str
    at: datetime = _ts(nullable=False, default=utcnow)
    from_state: Optional[str] = None
    to_state: Optional[str] = None
    detail: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Attachment(SQLModel, table=True):
    __tablename__ = "attachment"
    id: Optional[int] = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    kind: str  # "image"
    channel: str
    media_ref: str  # platform media id / key, or a local path
    url: Optional[str] = None
    uploaded_by: Optional[str] = None
    created_at: datetime = _ts(nullable=False, default=utcnow)


class FollowUp(SQLModel, table=True):
    """A supervisor's follow-up of a low rating: owner, deadline, outcome (bot/core/followup.py)."""

    __tablename__ = "follow_up"
    __table_args__ = (Index("ix_follow_up_open", "state", "due_at"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    owner_id: Optional[str] = Field(default=None, index=True)
    team: Optional[str] = None
    stars: int
    comment: Optional[str] = None
    state: str = "open"  # open | done
    due_at: datetime = _ts(nullable=False)
    steps_fired: int = 0  # of the follow-up escalation policy
    opened_at: datetime = _ts(nullable=False, default=utcnow)
    closed_at: Optional[datetime] = _ts()
    closed_by: Optional[str] = None
    note: Optional[str] = None


class ProcessedEvent(SQLModel, table=True):
    """Inbound platform events already handled: the platforms' retries stop here."""

    __tablename__ = "processed_event"
    platform: str = Field(primary_key=True)
    event_id: str = Field(primary_key=True)
    received_at: datetime = _ts(nullable=False, default=utcnow)


class InboxEvent(SQLModel, table=True):
    """An accepted inbound event waiting to be processed.

    A callback is answered once its event is a row here (written together with
    its ProcessedEvent mark); the inbox worker then applies it and marks it done
    in the same transaction as the change, so it is processed exactly once.
    """

    __tablename__ = "inbox_event"
    __table_args__ = (Index("ix_inbox_due", "status", "next_attempt_at"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    platform: str
    event_id: str
    payload: dict = Field(sa_column=Column(JSON, nullable=False))
    status: str = Field(default="pending")  # pending | done | dead (parked after its last attempt)
    attempts: int = 0
    next_attempt_at: datetime = _ts(nullable=False, default=utcnow)
    last_error: Optional[str] = None
    received_at: datetime = _ts(nullable=False, default=utcnow)
    processed_at: Optional[datetime] = _ts()


class CardAction(SQLModel, table=True):
    """Opaque callback id carried by a card button, resolved server-side."""

    __tablename__ = "card_action"
    token: str = Field(primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    action: str
    created_at: datetime = _ts(nullable=False, default=utcnow)


class OutboxMessage(SQLModel, table=True):
    """A message to deliver through a channel; the worker sends it after commit."""

    __tablename__ = "outbox"
    __table_args__ = (
        # The sweep reads only rows that are due: (status, due time), never the whole queue.
        Index("ix_outbox_due", "status", "next_attempt_at"),
        # One recipient's queue: blockers, deferrals and digests read it, never the whole table.
        Index("ix_outbox_recipient", "channel", "to_kind", "to_id", "status", "next_attempt_at"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    channel: str
    to_kind: str  # "user" | "group"
    to_id: str
    message: dict = Field(sa_column=Column(JSON, nullable=False))
    ticket_id: Optional[int] = Field(default=None, index=True)
    # Cards only: later updates of this card go to every address it was sent to.
    track_key: Optional[str] = Field(default=None, index=True)
    # 0 page (escalation card, call, SMS), 1 reply or receipt, 2 card update, 3 new card:
    # served in that order, and in order of writing within one class and recipient.
    msg_class: int = 3
    status: str = Field(default="pending")  # pending | sending | sent | failed
    attempts: int = 0
    # When the row is next looked at: due time while pending, end of the lease while sending.
    next_attempt_at: datetime = _ts(nullable=False, default=utcnow)
    lease_until: Optional[datetime] = _ts()
    lease_owner: Optional[str] = None  # the process identity holding the lease
    last_error: Optional[str] = None
    created_at: datetime = _ts(nullable=False, default=utcnow)
    sent_at: Optional[datetime] = _ts()


class CardRef(SQLModel, table=True):
    """The platform's handle of a card already sent, so later changes update it."""

    __tablename__ = "card_ref"
    __table_args__ = (Index("ix_card_ref_track", "track_key"),)  # the outbox looks handles up by track key
    channel: str = Field(primary_key=True)
    to_kind: str = Field(primary_key=True)
    to_id: str = Field(primary_key=True)
    track_key: str = Field(primary_key=True)
    ref: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = _ts(nullable=False, default=utcnow)


class PlaygroundMessage(SQLModel, table=True):
    """What the playground page shows; written by the playground channel."""

    __tablename__ = "playground_message"
    __table_args__ = (UniqueConstraint("outbox_id", name="uq_playground_outbox"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    conversation: str = Field(index=True)
    sender_id: Optional[str] = None  # None: the bot
    sender_name: str
    kind: str  # text | card | card_update | image
    payload: dict = Field(sa_column=Column(JSON, nullable=False))
    outbox_id: Optional[int] = None
    created_at: datetime = _ts(nullable=False, default=utcnow)


# ---- DingTalk channel (bot/channels/dingtalk/) ---------------------------------


class DingTalkSession(SQLModel, table=True):
    """The latest sessionWebhook of a DingTalk conversation and when it expires.

    Replies go through it while it is valid (the only way to @ people there);
    after that, and for conversations without one, the robot OpenAPI is used.
    """

    __tablename__ = "dingtalk_session"
    to_kind: str = Field(primary_key=True)  # "user" (staffId) | "group" (openConversationId)
    to_id: str = Field(primary_key=True)
    webhook: str
    expires_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False, default=utcnow)


class DingTalkUserSync(SQLModel, table=True):
    """An address-book event (user joined / changed) waiting for the member's
    details from DingTalk's API, fetched after the callback was answered."""

    __tablename__ = "dingtalk_user_sync"
    user_id: str = Field(primary_key=True)
    event_type: str
    received_at: datetime = _ts(nullable=False, default=utcnow)
    next_attempt_at: datetime = _ts(nullable=False, default=utcnow, index=True)
    attempts: int = 0
    last_error: Optional[str] = None


# ---- WeCom channel (bot/channels/wecom/) ----------------------------------------


class WeComCardCode(SQLModel, table=True):
    """The newest click's unused response_code of a WeCom template card, per task_id.

    WeCom hands out a single-use code with each card sent (kept in the card's
    CardRef) and with each click; `update_template_card` consumes one. Clicks'
    codes are kept here, not in CardRef (which the outbox rewrites after each
    send), so a click's code is not lost to a concurrent delivery.
    """

    __tablename__ = "wecom_card_code"
    task_id: str = Field(primary_key=True)
    userid: str = Field(index=True)
    response_code: Optional[str] = None
    issued_at: datetime = _ts(nullable=False, default=utcnow)
    # The newest click (None: the code came with the send answer): a re-delivered
    # or older click must not bring back a code already used.
    clicked_at: Optional[datetime] = _ts()
    click_code: Optional[str] = None


# ---- Escalation (escalation/) ----------------------------------------------


class EscalationTimer(SQLModel, table=True):
    """One escalation chain of one ticket: the policy snapshot, where the chain
    is, and when its next step is due.

    The sweep reads the `due_at` index. Every writer holds the ticket's row lock
    (commands lock the ticket, the sweep locks ticket and timer together), and
    `fence` changes with every write: an update made from a stale read matches
    no row and fires nothing.
    """

    __tablename__ = "escalation_timer"
    ticket_id: int = Field(foreign_key="ticket.id", primary_key=True)
    chain: str = Field(primary_key=True)  # "unclaimed" | "no_progress" | an open ticket state
    priority: str
    # The chain's steps as configured when it started (later edits don't apply).
    steps: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    repeat: int = 0
    cycle_s: float = 0.0  # time between runs when repeating
    anchor_at: datetime = _ts(nullable=False)  # when the ticket entered the chain's state
    pos: int = 0  # next step to fire, counted over the runs: run * len(steps) + index
    run_fired: int = 0  # steps fired since the chain (re)started
    fired: int = 0
    due_at: Optional[datetime] = _ts(index=True)  # None: stopped or finished
    fence: int = 0
    status: str = "active"  # active | stopped | done
    stop_reason: Optional[str] = None
    last_fired_at: Optional[datetime] = _ts()
    last_jump_at: Optional[datetime] = _ts()
    # Deadline steps already fired ("<index>:<run>@<deadline>"): once per deadline.
    done_keys: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = _ts(nullable=False, default=utcnow)


class PhoneCall(SQLModel, table=True):
    """A voice call or SMS to a person: the throttle counts these, the voice
    webhook finds the ticket and chain of a call here."""

    __tablename__ = "phone_call"
    __table_args__ = (
        UniqueConstraint("outbox_id", "kind", name="uq_phone_call_outbox"),
        Index("ix_phone_call_person", "person_id", "kind", "created_at"),
        Index("ix_phone_call_number", "to_number", "provider", "created_at"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    kind: str  # call | sms
    person_id: str
    to_number: str
    ticket_id: Optional[int] = Field(default=None, index=True)
    chain: Optional[str] = None
    step: Optional[int] = None  # the chain position that placed the call
    fence: Optional[int] = None  # the chain's fence after that step: a later change makes the call stale
    outbox_id: Optional[int] = None
    provider: Optional[str] = None  # aliyun | tencent | twilio: who placed it (per-callee limits count these)
    # placing | sent | throttled | failed, then the provider's final call status
    # (completed, no-answer, busy, ...) or what the keypad did (acknowledged, escalated).
    status: str = "placing"
    sid: Optional[str] = Field(default=None, index=True)
    digits: Optional[str] = None
    error: Optional[str] = None
    created_at: datetime = _ts(nullable=False, default=utcnow)
    updated_at: datetime = _ts(nullable=False, default=utcnow)


class ProcessHeartbeat(SQLModel, table=True):
    """One row per running process: written every second and by /healthz.

    Outbox leases held by a process whose heartbeat stopped are taken back
    after a short grace; `passes` holds each worker's last successful pass.
    """

    __tablename__ = "process_heartbeat"
    owner: str = Field(primary_key=True)  # host:name, stable across restarts of one process slot
    pid: int = 0
    started_at: datetime = _ts(nullable=False, default=utcnow)
    beat_at: datetime = _ts(nullable=False, default=utcnow)
    passes: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class PeriodicJob(SQLModel, table=True):
    """Last run of each periodic job (auditor, reports), shared by all processes."""

    __tablename__ = "periodic_job"
    name: str = Field(primary_key=True)
    last_started_at: Optional[datetime] = _ts()
    last_finished_at: Optional[datetime] = _ts()
    owner: Optional[str] = None  # host:pid of the process that ran it
