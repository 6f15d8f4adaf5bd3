"""Who should take a new ticket: team and engineer, scored, with the reasons.

Skills are category ids (nlp/data/taxonomy.toml). The customer's region is the
directory's when it knows it, else the location of their mobile number (the
`phonenumbers` package's geocoder, "江苏省常州市") placed in a region by
`[dispatch.regions]`. An engineer's score adds the skill, region and on-call
weights that apply and subtracts the load weight per ticket in hand; the best
score is suggested, and the card says why ("张工 · 擅长漏水渗水 · 华东 · 手上 1 单").
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from sqlalchemy import bindparam, func
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.config import Config, TeamConfig
from bot.core import states as st
from storage.models import Person, Ticket

# The on-call person of a team at a moment (escalation.oncall.OnCall.who, adapted).
OnCallLookup = Callable[[str, datetime], "str | None"]


def phone_location(phone: str | None) -> str | None:
    """Where a mobile number is registered ("上海市", "江苏省常州市"), or None."""
    if not phone:
        return None
    import phonenumbers
    from phonenumbers import geocoder

    try:
        number = phonenumbers.parse(phone, "CN")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return geocoder.description_for_number(number, "zh") or None


@dataclass(frozen=True)
class Suggestion:
    team: str | None
    engineer: Person | None = None
    skill: bool = False
    region: str | None = None  # the region both share, when they do
    load: int = 0
    oncall: bool = False

    def detail(self) -> dict:
        """The reasons as the report's audit event keeps them (the cards read them there)."""
        return {"suggested": self.engineer.id if self.engineer else None, "skill": self.skill,
                "region": self.region, "load": self.load, "oncall": self.oncall}


def unknown_skills(config: Config, categories: set[str]) -> list[str]:
    """Config keys whose skills are not category ids ("teams[0].skills: '泵'"): they never match."""
    out = []
    for kind, items in (("teams", config.teams), ("people", config.people)):
        for i, item in enumerate(items):
            out += [f"{kind}[{i}].skills: {sk!r}" for sk in item.skills if sk not in categories]
    return out


# A team's active engineers, each with the tickets in their hands (one statement,
# counted on the assignee/state index). Built once: every new ticket runs it, and
# building a statement costs about as much as running it.
_LOAD = (select(func.count()).select_from(Ticket)
         .where(Ticket.assignee_id == Person.id, Ticket.state.in_(sorted(st.IN_WORK | {st.TRANSFERRED, st.NEW})))
         .correlate(Person).scalar_subquery())
_ENGINEERS = (select(Person, _LOAD)
              .where(Person.team == bindparam("team"), Person.role == "engineer", Person.active.is_(True))
              .order_by(Person.id))


class Dispatcher:
    def __init__(self, config: Config, oncall: OnCallLookup | None = None):
        self.config = config
        self.oncall = oncall

    def region_of(self, person: Person, phone: str | None = None) -> str | None:
        """The customer's region: the directory's, else their mobile number's."""
        if person.region:
            return person.region
        where = phone_location(person.phone or phone)
        if where is None:
            return None
        for region, places in self.config.dispatch.regions.items():
            if any(place and place in where for place in places):
                return region
        return where

    def _team(self, category: str, region: str | None) -> TeamConfig | None:
        d = self.config.dispatch

        def score(team: TeamConfig) -> float:
            return (d.skill_weight * (category in team.skills)
                    + d.region_weight * bool(region and team.region == region))

        teams = self.config.teams
        return max(teams, key=score) if teams else None  # max keeps the first of equals

    async def suggest(self, s: AsyncSession, customer: Person, category: str, phone: str | None,
                      now: datetime) -> Suggestion:
        region = self.region_of(customer, phone)
        team = self._team(category, region)
        if team is None:
            return Suggestion(None)
        rows = (await s.exec(_ENGINEERS, params={"team": team.id})).all()
        if not rows:
            return Suggestion(team.id)
        engineers = [e for e, _ in rows]
        load = {e.id: n for e, n in rows}
        on_call = self.oncall(team.id, now) if self.oncall else None
        d = self.config.dispatch

        def parts(e: Person) -> Suggestion:
            return Suggestion(team.id, e, category in (e.skills or []),
                              region if region and (e.region or team.region) == region else None,
                              load.get(e.id, 0), e.id == on_call)

        def score(sg: Suggestion) -> float:
            return (d.skill_weight * sg.skill + d.region_weight * bool(sg.region)
                    + d.oncall_weight * sg.oncall - d.load_weight * sg.load)

        return max((parts(e) for e in engineers), key=score)
