"""Request and response models of the API: they validate requests and are
the schemas of the OpenAPI document."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from bot.core import states as st

State = Literal[st.ALL]  # type: ignore[valid-type]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
PersonId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- tickets -------------------------------------------------------------------


class CreateTicket(_In):
    """A report from another system, in the reporter's words."""

    text: Text = Field(description="what is wrong, as the reporter said it; classified like a chat report")
    reporter_phone: Optional[Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^\+?[0-9 -]{5,20}$")]] = \
        Field(default=None, description="a known person with this phone becomes the reporter and hears of progress in chat")
    reporter_name: Optional[Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]] = None
    external_id: Optional[ShortText] = Field(default=None, description="the ticket's id in the calling system")


class PersonRef(BaseModel):
    id: str
    name: str


class Freeze(BaseModel):
    reason: str
    frozen_at: datetime
    systems: dict[str, dict]


class TicketOut(BaseModel):
    model_config = ConfigDict(title="Ticket")
    number: str
    state: str = Field(description="one of: " + ", ".join(st.ALL))
    state_name: str
    category: str
    category_name: str
    priority: str
    summary: str
    location: Optional[str] = None
    serial: Optional[str] = None
    error_code: Optional[str] = None
    impact: Optional[str] = None
    reporter: PersonRef
    assignee: Optional[PersonRef] = None
    team: Optional[str] = None
    resolution: Optional[str] = None
    rating: Optional[int] = None
    escalation_level: int
    created_at: datetime
    updated_at: datetime
    claimed_at: Optional[datetime] = None
    resolved_at: Optional[datetime] = None
    closed_at: Optional[datetime] = None
    respond_by: datetime
    resolve_by: datetime
    frozen: Optional[Freeze] = None
    external_ids: dict[str, str] = Field(default_factory=dict)


class TicketPage(BaseModel):
    items: list[TicketOut]
    next: Optional[str] = Field(description="pass as `cursor` for the next page; null on the last")


class TicketQuery(_In):
    model_config = ConfigDict(extra="ignore")
    state: Optional[State] = None
    priority: Optional[Literal["P0", "P1", "P2"]] = None
    category: Optional[Annotated[str, StringConstraints(max_length=64)]] = None
    assignee: Optional[Annotated[str, StringConstraints(max_length=128)]] = Field(default=None, description="person id")
    team: Optional[Annotated[str, StringConstraints(max_length=64)]] = None
    updated_since: Optional[datetime] = None
    limit: Optional[int] = Field(default=None, ge=1, le=500, description="page size (default [api] page_size)")
    cursor: Optional[Annotated[str, StringConstraints(max_length=200)]] = None


class Event(BaseModel):
    id: int
    action: str
    actor_id: Optional[str] = None
    actor_name: str
    channel: str
    at: datetime
    from_state: Optional[str] = None
    to_state: Optional[str] = None
    detail: dict


class EventList(BaseModel):
    items: list[Event]


# ---- actions -------------------------------------------------------------------


class ActAs(_In):
    actor: PersonId = Field(description="id of the person acting; the chat's permission rules apply to them")


class Transfer(ActAs):
    to: PersonId = Field(description="id of the engineer taking the ticket over")


class Stage(ActAs):
    stage: Literal["depart", "arrive", "start_repair"]


class Comment(ActAs):
    text: Text


class Resolve(ActAs):
    note: Optional[Text] = Field(default=None, description="what was done; parts used go here too")


class Cancel(ActAs):
    reason: Optional[Text] = None


class ActionResult(BaseModel):
    changed: bool = Field(description="false when the action had already happened (a repeat)")
    ticket: TicketOut


# ---- directory -----------------------------------------------------------------


class PersonOut(BaseModel):
    model_config = ConfigDict(title="Person")
    id: str
    name: str
    role: str
    team: Optional[str] = None
    region: Optional[str] = None
    skills: list[str]
    active: bool


class PersonList(BaseModel):
    items: list[PersonOut]


class TeamOut(BaseModel):
    model_config = ConfigDict(title="Team")
    id: str
    name: str
    region: Optional[str] = None
    skills: list[str]
    lead: Optional[str] = None
    director: Optional[str] = None


class TeamList(BaseModel):
    items: list[TeamOut]
