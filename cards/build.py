"""Cards for each ticket state and audience, built from a ticket snapshot."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from bot.core import states as st
from bot.texts import t
from cards.model import PRIORITY_COLOR, Button, Card, CardField, Color, TimelineStep

# Timeline node -> the event action that reaches it.
TIMELINE_ACTIONS = ("claim", "depart", "arrive", "start_repair", "resolve", "rate")


@dataclass(frozen=True)
class TicketView:
    """What the cards show of a ticket, with names and local times resolved."""

    id: int
    number: str
    state: str
    priority: str
    category_name: str
    summary: str
    reporter_name: str
    assignee_name: str | None = None
    location: str | None = None
    serial: str | None = None
    error_code: str | None = None
    phone: str | None = None
    impact: str | None = None
    respond_by: str = ""  # local "HH:MM" or "MM-DD HH:MM"
    resolve_by: str = ""
    rating: int | None = None
    resolution: str | None = None
    evidence: tuple[str, ...] = ()
    linked_reports: int = 0  # other people who reported the same incident
    # Event action -> local time it last happened ("HH:MM").
    times: Mapping[str, str] = field(default_factory=dict)
    # The assignee has claimed it (False: only suggested, or nobody).
    owned: bool = False
    # Why the suggested engineer was suggested ("擅长漏水渗水 · 华东 · 手上 1 单").
    suggestion: str | None = None
    photos: tuple[str, ...] = ()  # media refs of the newest few, newest last
    photo_count: int = 0
    # An outside provider's countdown ("维保外包 · 剩 3 小时 20 分").
    countdown: str | None = None
    # Who last acknowledged an escalation, when and how ("赵组长 21:40（电话）").
    acknowledged: str | None = None


@dataclass(frozen=True)
class FollowUpView:
    """A follow-up task as its card shows it."""

    id: int
    ticket_number: str
    stars: int
    comment: str | None
    owner_name: str
    due: str
    done: bool = False
    note: str | None = None
    closed_by: str | None = None


def _color(v: TicketView) -> Color:
    if v.state in (st.CLOSED, st.CANCELLED):
        return "grey"
    if v.state == st.RESOLVED:
        return "green"
    return PRIORITY_COLOR.get(v.priority, "blue")


def _state_label(state: str) -> str:
    return t(f"state.{state}")


def _facts(v: TicketView) -> list[CardField]:
    f = [
        CardField(t("card.field.category"), v.category_name),
        CardField(t("card.field.priority"), t(f"priority.{v.priority}")),
    ]
    for key, value in (("location", v.location), ("serial", v.serial), ("error_code", v.error_code),
                       ("phone", v.phone), ("impact", v.impact)):
        if value:
            f.append(CardField(t(f"card.field.{key}"), value))
    return f


def _people_fields(v: TicketView) -> list[CardField]:
    """Who has it: the owner once claimed; until then the suggestion and why."""
    if v.owned and v.assignee_name:
        return [CardField(t("card.field.assignee"), v.assignee_name)]
    if v.assignee_name and v.state in st.UNCLAIMED:
        value = v.assignee_name + (f" · {v.suggestion}" if v.suggestion else "")
        return [CardField(t("card.field.suggested"), value)]
    return []


def _ack_fields(v: TicketView) -> list[CardField]:
    return [CardField(t("card.field.acked"), v.acknowledged)] if v.acknowledged and v.state in st.OPEN else []


def _photo_fields(v: TicketView) -> list[CardField]:
    return [CardField(t("card.field.photos"), t("card.photos", count=v.photo_count))] if v.photo_count else []


def _buttons(tokens: Mapping[str, str], *actions: str) -> tuple[Button, ...]:
    out = []
    for i, action in enumerate(actions):
        if action in tokens:
            style = "danger" if action == "escalate" else ("primary" if i == 0 else "default")
            out.append(Button(t(f"button.{action}"), tokens[action], style))
    return tuple(out)


ENGINEER_ACTIONS: dict[str, tuple[str, ...]] = {
    st.NEW: ("claim", "transfer", "escalate"),
    st.TRANSFERRED: ("claim", "transfer", "escalate"),
    st.REOPENED: ("claim", "transfer", "escalate"),
    st.CLAIMED: ("depart", "arrive", "transfer", "escalate"),
    st.ON_THE_WAY: ("arrive", "transfer", "escalate"),
    st.ON_SITE: ("start_repair", "transfer"),
    st.REPAIRING: ("resolve", "transfer"),
    st.VERIFYING: ("resolve", "start_repair", "transfer"),
}


def engineer_card(v: TicketView, tokens: Mapping[str, str]) -> Card:
    reporter = v.reporter_name
    if v.linked_reports:
        reporter = f"{reporter}  {t('card.engineer.more_reporters', count=v.linked_reports)}"
    fields = _facts(v) + [
        CardField(t("card.field.reporter"), reporter),
        CardField(t("card.field.state"), _state_label(v.state)),
    ] + _people_fields(v) + _ack_fields(v)
    if v.countdown and v.state in st.OPEN:
        fields.append(CardField(t("card.field.provider_sla"), v.countdown))
    if v.state in st.UNCLAIMED:
        fields.append(CardField(t("card.field.respond_by"), v.respond_by))
    elif v.state in st.IN_WORK:
        fields.append(CardField(t("card.field.resolve_by"), v.resolve_by))
    if v.resolution:
        fields.append(CardField(t("card.field.resolution"), v.resolution))
    fields += _photo_fields(v)
    footer = None
    if v.owned and v.state not in st.UNCLAIMED and v.assignee_name and v.state != st.CANCELLED:
        footer = t("card.engineer.owned", name=v.assignee_name, state=_state_label(v.state))
    return Card(
        kind="engineer",
        title=t("card.engineer.title", priority=v.priority, category=v.category_name),
        subtitle=v.number,
        color=_color(v),
        fields=tuple(fields),
        body=v.summary,
        buttons=_buttons(tokens, *ENGINEER_ACTIONS.get(v.state, ())),
        footer=footer,
        track_key=f"t{v.id}:eng",
        images=v.photos,
    )


def status_card(v: TicketView) -> Card:
    reached = st.TIMELINE_PROGRESS.get(v.state, -1)
    steps = []
    for i, action in enumerate(TIMELINE_ACTIONS):
        state = "done" if i < reached else ("current" if i == reached else "todo")
        if i == reached and i == len(TIMELINE_ACTIONS) - 1:
            state = "done"
        steps.append(TimelineStep(t(f"timeline.{action}"), state, v.times.get(action) if i <= reached else None))
    fields = [
        CardField(t("card.field.category"), v.category_name),
        CardField(t("card.field.priority"), t(f"priority.{v.priority}")),
        CardField(t("card.field.state"), _state_label(v.state)),
    ]
    if v.assignee_name and v.owned:
        fields.append(CardField(t("card.field.engineer"), v.assignee_name))
    if v.rating:
        fields.append(CardField(t("card.field.rating"), "★" * v.rating))
    if v.linked_reports:
        fields.append(CardField(t("card.field.reporters"), t("card.engineer.more_reporters", count=v.linked_reports)))
    footer = t("card.status.respond_by", time=v.respond_by) if v.state in st.UNCLAIMED else None
    return Card(
        kind="status",
        title=t("card.status.title", number=v.number),
        color=_color(v),
        fields=tuple(fields),
        body=v.summary,
        timeline=tuple(steps),
        footer=footer,
        track_key=f"t{v.id}:status",
        images=v.photos,
    )


def escalation_card(v: TicketView, tokens: Mapping[str, str], reason: str) -> Card:
    fields = _facts(v) + [
        CardField(t("card.field.state"), _state_label(v.state)),
        CardField(t("card.field.reporter"), v.reporter_name),
    ] + _people_fields(v) + _ack_fields(v)
    if v.countdown and v.state in st.OPEN:
        fields.append(CardField(t("card.field.provider_sla"), v.countdown))
    actions = ("ack", "transfer") if v.state in st.OPEN else ()
    return Card(
        kind="escalation",
        title=t("card.escalation.title", number=v.number),
        subtitle=reason,
        color="red" if v.state in st.OPEN else _color(v),
        fields=tuple(fields),
        body=v.summary,
        buttons=_buttons(tokens, *actions),
        track_key=f"t{v.id}:esc",
    )


def rating_card(v: TicketView, tokens: Mapping[str, str]) -> Card:
    buttons = tuple(
        Button(t("button.rate", stars="★" * n), tokens[f"rate:{n}"], "primary" if n == 5 else "default")
        for n in range(5, 0, -1)
        if v.state == st.RESOLVED and f"rate:{n}" in tokens
    )
    body = t("card.rating.body", name=v.assignee_name or "")
    footer = t("card.rating.done", stars="★" * v.rating) if v.rating else None
    return Card(
        kind="rating",
        title=t("card.rating.title", number=v.number),
        color="green",
        body=body + (f"\n{v.resolution}" if v.resolution else ""),
        buttons=buttons,
        footer=footer,
        track_key=f"t{v.id}:rating",
    )


def followup_card(f: FollowUpView) -> Card:
    """The lead's follow-up task of a low rating; its own card, next to the rating card."""
    fields = [
        CardField(t("card.field.rating"), "★" * f.stars),
        CardField(t("card.field.customer_comment"), f.comment or t("card.followup.no_comment")),
        CardField(t("card.field.followup_owner"), f.owner_name),
        CardField(t("card.field.followup_due"), f.due),
    ]
    if f.done:
        fields.append(CardField(t("card.field.followup_result"), f.note or ""))
    return Card(
        kind="followup",
        title=t("card.followup.title", number=f.ticket_number),
        subtitle=t("card.followup.done", name=f.closed_by or "") if f.done else t("card.followup.open"),
        color="grey" if f.done else "orange",
        fields=tuple(fields),
        footer=None if f.done else t("card.followup.how", number=f.ticket_number),
        track_key=f"f{f.id}:followup",
    )


def transfer_card(v: TicketView, candidates: Mapping[str, tuple[str, str]]) -> Card:
    """Pick who gets the ticket: candidates maps person id -> (name, token)."""
    return Card(
        kind="notice",
        title=t("card.transfer.title", number=v.number),
        color="blue",
        body=t("card.transfer.body"),
        buttons=tuple(Button(name, token) for name, token in candidates.values()),
    )


def sop_card(v: TicketView, title: str, steps: tuple[str, ...]) -> Card:
    body = "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))
    return Card(kind="sop", title=t("card.sop.title", title=title), subtitle=v.number, color="blue", body=body)


DIGEST_LINES = 20  # tickets listed on a digest card; the count covers all
DIGEST_KEY = "digest"  # a recipient's digest card: one card, updated in place


def digest_card(entries: list[tuple[str, str]], total: int | None = None) -> Card:
    """New tickets folded into one card for a recipient at its platform's limit:
    (number, title) per ticket, newest last; updated in place as more arrive.
    `total` is how many were folded in all when `entries` holds only the newest
    (the card lists at most DIGEST_LINES of them)."""
    total = len(entries) if total is None else max(total, len(entries))
    lines = [t("card.digest.line", number=number, title=title) for number, title in entries[-DIGEST_LINES:]]
    if total > DIGEST_LINES:
        lines.insert(0, t("card.digest.more", count=total - DIGEST_LINES))
    return Card(kind="digest", title=t("card.digest.title", count=total), color="orange",
                body="\n".join(lines), footer=t("card.digest.footer"), track_key=DIGEST_KEY)
