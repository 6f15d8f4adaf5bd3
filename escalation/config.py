"""Configuration of escalation policies, on-call shifts, phones and the auditor.

    [escalation]                      # settings, then one policy per priority
    [[escalation.P0.steps]]           # ordered steps: after D in state S -> targets by means
    [oncall.<team id>]                # shifts, rotation, overrides
    [phone]                           # provider order, per-person throttles
    [aliyun] [tencent] [twilio]       # voice calls (and SMS) per provider

The classes follow bot/config.py: unknown keys are errors, durations carry
units. References between sections (people, teams) are checked by
`check_references`, called from bot/config.py's Config, with messages that name
the offending key, e.g. "escalation.P0.steps[1].targets[0]: unknown person".
"""
from __future__ import annotations

import functools

import re
from datetime import date, datetime, time, timedelta
from typing import Annotated, Literal, Optional, Protocol

from pydantic import AfterValidator, Field, field_validator, model_validator

from bot.config_types import Duration, Section as _Section
from bot.core import states as st

PRIORITIES = ("P0", "P1", "P2")
Means = Literal["card", "mention", "sms", "call"]

# A step's state: "unclaimed" (new, transferred or reopened and nobody claimed
# it), "no_progress" (open, and its state has not changed for `after`), or one
# open ticket state by name ("after 2h in on_site").
CHAIN_STATES = ("unclaimed", "no_progress") + tuple(sorted(st.OPEN))
_TARGET_RE = re.compile(r"^(assignee|lead|director|oncall|oncall:[A-Za-z0-9_.-]+|person:[A-Za-z0-9_.-]+)$")
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def _target(value: str) -> str:
    if not _TARGET_RE.match(value):
        raise ValueError(f"{value!r}: a target is assignee, lead, director, oncall, oncall:<team id> "
                         "or person:<person id>")
    return value


Target = Annotated[str, AfterValidator(_target)]


class StepConfig(_Section):
    """One step: `after` this long in `state`, notify `targets` by `means`."""

    after: Duration
    state: str = "unclaimed"
    # What `after` counts from: "state" = when the ticket entered the state (for
    # no_progress: its last change); "deadline" = the ticket's current deadline
    # (respond_by while unclaimed, resolve_by after), so the step follows the
    # deadlines when they move (a reopen resets them).
    since: Literal["state", "deadline"] = "state"
    # "assignee", "lead", "director" (of the ticket's team), "oncall" (the
    # team's on-call person when the step fires), "oncall:<team>", "person:<id>".
    targets: list[Target] = Field(min_length=1)
    means: list[Means] = Field(min_length=1)

    @field_validator("after")
    @classmethod
    def _not_negative(cls, v: timedelta) -> timedelta:
        if v < timedelta(0):
            raise ValueError("must not be negative")
        return v

    @field_validator("state")
    @classmethod
    def _known_state(cls, v: str) -> str:
        if v not in CHAIN_STATES:
            raise ValueError(f"unknown state {v!r}: use one of {', '.join(CHAIN_STATES)}")
        return v



class PolicyConfig(_Section):
    """The steps of one priority. Steps of the same state form one chain."""

    steps: list[StepConfig] = Field(default_factory=list)
    # Run each chain again this many times after its last step ...
    repeat: int = Field(default=0, ge=0, le=20)
    # ... this long after the previous run (default: the chain's last `after`).
    repeat_every: Optional[Duration] = None

    @field_validator("repeat_every")
    @classmethod
    def _positive(cls, v: Optional[timedelta]) -> Optional[timedelta]:
        if v is not None and v <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return v

    def chains(self) -> dict[str, list[tuple[int, StepConfig]]]:
        """Steps grouped by state, in config order, with their index in `steps`."""
        out: dict[str, list[tuple[int, StepConfig]]] = {}
        for i, step in enumerate(self.steps):
            out.setdefault(step.state, []).append((i, step))
        return out


def _step(after: str, state: str, targets: list[str], means: list[str]) -> StepConfig:
    return StepConfig(after=after, state=state, targets=targets, means=means)


# Defaults from the field: P0 unclaimed 10 min -> the lead (@ in the group and a
# direct card), 30 min without progress -> the director and a voice call;
# P1 30 min -> lead, 2 h -> director; P2 4 h -> lead.
def _p0() -> PolicyConfig:
    return PolicyConfig(steps=[_step("10m", "unclaimed", ["lead"], ["mention", "card"]),
                               _step("30m", "no_progress", ["director"], ["card", "call"])])


def _p1() -> PolicyConfig:
    return PolicyConfig(steps=[_step("30m", "unclaimed", ["lead"], ["mention", "card"]),
                               _step("2h", "no_progress", ["director"], ["card"])])


def _p2() -> PolicyConfig:
    return PolicyConfig(steps=[_step("4h", "unclaimed", ["lead"], ["mention", "card"])])


class AuditorConfig(_Section):
    """The watcher of the watcher: late escalations and stuck outbox rows."""

    interval: Duration = timedelta(minutes=1)
    # An open ticket whose escalation is later than this is reported.
    late_after: Duration = timedelta(minutes=1)
    # An outbound message not delivered this long after it was written is reported.
    outbox_stuck_after: Duration = timedelta(minutes=10)
    # Pinged (GET) after every healthy audit; a dead-man switch (healthchecks.io,
    # Uptime Kuma push, ...) alerts when the pings stop.
    heartbeat_url: Optional[str] = None
    heartbeat_timeout: Duration = timedelta(seconds=10)


class EscalationConfig(_Section):
    enabled: bool = True
    # How often the sweep looks for due steps (APScheduler, in every process).
    sweep_interval: Duration = timedelta(seconds=1)
    # Steps fired per transaction. Default: 25 on SQLite (a batch holds the only
    # write lock, so keep it short for the callbacks waiting), 50 on PostgreSQL.
    batch_size: Optional[int] = Field(default=None, ge=1, le=5000)
    # A manual 加急 jumps to the next step at most once per this period per
    # ticket (a customer pressing it five times pages nobody five times).
    escalate_cooldown: Duration = timedelta(minutes=5)
    auditor: AuditorConfig = Field(default_factory=AuditorConfig)
    P0: PolicyConfig = Field(default_factory=_p0)
    P1: PolicyConfig = Field(default_factory=_p1)
    P2: PolicyConfig = Field(default_factory=_p2)

    @field_validator("sweep_interval")
    @classmethod
    def _interval(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return v

    def policy(self, priority: str) -> PolicyConfig:
        return getattr(self, priority, None) or PolicyConfig()


# ---- on-call ---------------------------------------------------------------


def parse_hhmm(value: str) -> time:
    m = _HHMM.match(value.strip())
    if not m:
        raise ValueError(f'not a time of day: {value!r} (write e.g. "08:00", "20:30")')
    return time(int(m.group(1)), int(m.group(2)))


class ShiftConfig(_Section):
    """A daily shift in the config's time zone; end <= start crosses midnight."""

    name: str
    start: str
    end: str
    # Who takes this shift, in turn; defaults to the team's rotation.
    rotation: Optional[list[str]] = None

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        parse_hhmm(v)
        return v.strip()

    @field_validator("rotation")
    @classmethod
    def _nonempty(cls, v):
        if v is not None and not v:
            raise ValueError("needs at least one person (or leave it out)")
        return v

    @property
    def start_time(self) -> time:
        return parse_hhmm(self.start)

    @property
    def end_time(self) -> time:
        return parse_hhmm(self.end)

    def minutes(self) -> frozenset[int]:
        """The minutes of the day this shift covers."""
        return _shift_minutes(self.start, self.end)


@functools.lru_cache(maxsize=256)
def _shift_minutes(start: str, end: str) -> frozenset[int]:
    """Computed once per shift: dispatch asks who is on call for every report."""
    a, b = parse_hhmm(start), parse_hhmm(end)
    lo, hi = a.hour * 60 + a.minute, b.hour * 60 + b.minute
    if hi <= lo:
        hi += 1440
    return frozenset(m % 1440 for m in range(lo, hi))


class OverrideConfig(_Section):
    """Somebody else on call for a while (local times, or with an offset)."""

    person: str
    start: datetime
    end: datetime
    # Only stand in for this person; left out: for whoever is on call.
    replaces: Optional[str] = None

    @model_validator(mode="after")
    def _order(self):
        if (self.start.tzinfo is None) != (self.end.tzinfo is None):
            raise ValueError("start and end: give both with an offset or both without")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class OnCallConfig(_Section):
    """One team's on-call schedule."""

    # Who is on call, in turn.
    rotation: list[str] = Field(min_length=1)
    # The turn passes on every week or every day, at the start of the shift.
    rotate: Literal["weekly", "daily"] = "weekly"
    # The first day of the first turn (weekly turns start on this weekday).
    start_date: date = date(2026, 1, 5)
    # Empty: one shift around the clock.
    shifts: list[ShiftConfig] = Field(default_factory=list)
    overrides: list[OverrideConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _no_overlap(self):
        seen: dict[int, int] = {}
        for i, shift in enumerate(self.shifts):
            for m in shift.minutes():
                if m in seen:
                    raise ValueError(f"shifts[{i}] ({shift.name}) overlaps shifts[{seen[m]}] "
                                     f"({self.shifts[seen[m]].name}) at {m // 60:02d}:{m % 60:02d}")
                seen[m] = i
        return self


# ---- phones ------------------------------------------------------------------


class TwilioConfig(_Section):
    """Voice calls and SMS through Twilio."""

    account_sid: str = Field(min_length=1)
    auth_token: str = Field(min_length=1)  # RELAYDESK_TWILIO__AUTH_TOKEN
    from_number: str = Field(pattern=r"^\+\d{6,15}$")  # E.164, e.g. "+14155550100"
    api_base: str = "https://api.twilio.com"
    # Public base URL Twilio calls back (the voice webhook); default [server] public_url.
    voice_url: Optional[str] = None
    language: str = "zh-CN"
    voice: Optional[str] = None  # e.g. "Polly.Zhiyu"; left out: Twilio's default
    # Region codes (ISO 3166) of the numbers it calls; empty: every number.
    countries: list[str] = Field(default_factory=list)
    limits: list[str] = Field(default_factory=list)

    @field_validator("limits")
    @classmethod
    def _limits(cls, v: list[str]) -> list[str]:
        return [_limit(x) for x in v]


# What RelayDesk fills into a provider's approved TTS / SMS templates.
TEMPLATE_FIELDS = ("number", "category", "place", "priority", "minutes")
_LIMIT_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _limit(value: str) -> str:
    m = _LIMIT_RE.match(value)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"{value!r}: a limit is <calls>/<window>, e.g. \"1/1m\", \"5/1h\", \"20/1d\"")
    return value


Limit = Annotated[str, AfterValidator(_limit)]


def parse_limit(value: str) -> tuple[int, timedelta]:
    """"5/1h" -> (5, 1 hour)."""
    m = _LIMIT_RE.match(value)
    assert m is not None, value
    return int(m.group(1)), timedelta(seconds=int(m.group(2)) * _UNITS[m.group(3)])


def _field(value: str) -> str:
    if value not in TEMPLATE_FIELDS:
        raise ValueError(f"{value!r}: a template variable is filled with one of {', '.join(TEMPLATE_FIELDS)}")
    return value


TemplateField = Annotated[str, AfterValidator(_field)]
_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")


def _named(params: dict[str, str]) -> dict[str, str]:
    for name in params:
        if not _VAR_RE.match(name):
            raise ValueError(f"{name!r}: not a template variable name (letters, digits, _)")
    return params


NamedParams = Annotated[dict[str, TemplateField], AfterValidator(_named)]


class AliyunConfig(_Section):
    """Voice calls through Aliyun 语音服务 (dyvmsapi 2017-05-25), SMS through 短信服务 (dysmsapi)."""

    access_key_id: str = Field(min_length=1)
    access_key_secret: str = Field(min_length=1)  # RELAYDESK_ALIYUN__ACCESS_KEY_SECRET
    # The number callees see (a 专属号码 bought in the console); left out: the public pool.
    called_show_number: Optional[str] = None
    endpoint: str = "dyvmsapi.aliyuncs.com"
    sms_endpoint: str = "dysmsapi.aliyuncs.com"
    protocol: Literal["https", "http"] = "https"
    # IvrCall (keypad: 1 acknowledge, 2 escalate) where the account has it; else
    # SingleCallByTts, a one-way call that cannot be acknowledged by key.
    ivr: bool = True
    # The approved TTS template read out (TTS_...), and what fills its variables:
    # {template variable = "number" | "category" | "place" | "priority" | "minutes"}.
    tts_code: str = Field(pattern=r"^TTS_\d+$")
    tts_params: NamedParams = Field(default_factory=dict)
    # IvrCall only: the templates played after key 1 and key 2 (no variables).
    ack_code: Optional[str] = Field(default=None, pattern=r"^TTS_\d+$")
    escalate_code: Optional[str] = Field(default=None, pattern=r"^TTS_\d+$")
    play_times: int = Field(default=2, ge=1, le=3)
    key_timeout: Duration = timedelta(seconds=8)
    # SMS fallback: the approved signature and template (SMS_...), and its variables.
    sms_sign_name: Optional[str] = None
    sms_template_code: Optional[str] = Field(default=None, pattern=r"^SMS_\d+$")
    sms_params: NamedParams = Field(default_factory=dict)
    # Receipts pushed to /callbacks/aliyun/voice?token=<callback_token> (HTTP batch push).
    callback_token: Optional[str] = Field(default=None, min_length=16)
    # ... or pulled from the MNS queues the console made for them ({message type =
    # queue name}, e.g. VoiceReport = "Alicom-Queue-123-VoiceReport"): no inbound port.
    mns_queues: dict[Literal["VoiceCallReport", "VoiceReport"], str] = Field(default_factory=dict)
    # Aliyun's fixed MNS endpoint for 云通信 receipts, and where the queue tokens come from.
    mns_endpoint: str = "https://1943695596114318.mns.cn-hangzhou.aliyuncs.com"
    dybaseapi_endpoint: str = "dybaseapi.aliyuncs.com"
    mns_wait: Duration = timedelta(seconds=10)  # long polling, at most 30s
    countries: list[str] = Field(default_factory=lambda: ["CN"])
    # Aliyun's own per-callee limits (flow control): calls beyond them are refused.
    limits: list[Limit] = Field(default_factory=lambda: ["1/1m", "5/1h", "20/1d"])

    @model_validator(mode="after")
    def _ivr_codes(self):
        if self.ivr and not (self.ack_code and self.escalate_code):
            raise ValueError("ivr = true needs ack_code and escalate_code (the templates played after key 1 / 2)")
        if not timedelta(0) <= self.mns_wait <= timedelta(seconds=30):
            raise ValueError("mns_wait: MNS long-polls between 0s and 30s")
        if (self.sms_sign_name is None) != (self.sms_template_code is None):
            raise ValueError("sms_sign_name and sms_template_code: give both (SMS fallback) or neither")
        return self


class TencentConfig(_Section):
    """Voice calls through Tencent Cloud 语音消息 (VMS, SendTtsVoice)."""

    secret_id: str = Field(min_length=1)
    secret_key: str = Field(min_length=1)  # RELAYDESK_TENCENT__SECRET_KEY
    voice_sdk_appid: str = Field(pattern=r"^\d+$")
    region: str = "ap-guangzhou"
    endpoint: str = "vms.tencentcloudapi.com"
    protocol: Literal["https", "http"] = "https"
    # The approved voice template (its id), and what fills {1}, {2}, ... in order.
    template_id: str = Field(pattern=r"^\d+$")
    template_params: list[TemplateField] = Field(default_factory=list)
    play_times: int = Field(default=2, ge=1, le=3)
    # Keypress and status callbacks at /callbacks/tencent/voice?token=<callback_token>
    # (Tencent does not sign them: this secret in the console's callback URL does).
    callback_token: str = Field(min_length=16)
    countries: list[str] = Field(default_factory=lambda: ["CN"])
    # Tencent's default per-callee limits for voice notifications (raised on request
    # in the console; its 1 call between 22:00 and 08:00 is not modelled here).
    limits: list[Limit] = Field(default_factory=lambda: ["1/30s", "2/10m", "5/1d"])


PROVIDERS = ("aliyun", "tencent", "twilio")


class PhoneConfig(_Section):
    """What all phone providers share: which to try in which order, and the
    per-person throttles."""

    # Tried in this order for each number (among those whose `countries` reach
    # it); left out: aliyun, tencent, twilio, as far as configured.
    providers: list[Literal["aliyun", "tencent", "twilio"]] = Field(default_factory=list)
    # Prefixed to numbers written without "+" (people's phones in the directory).
    default_country_code: str = Field(default="+86", pattern=r"^\+\d{1,4}$")
    ring_timeout: Duration = timedelta(seconds=30)
    # Per person: at most `max_calls` calls in `call_window`; beyond that an SMS.
    max_calls: int = Field(default=3, ge=1)
    call_window: Duration = timedelta(minutes=15)
    max_sms: int = Field(default=10, ge=1)
    sms_window: Duration = timedelta(minutes=15)
    # An SMS instead when a call is throttled or cannot be placed.
    sms_fallback: bool = True

    @field_validator("providers")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("names a provider twice")
        return v


def phone_providers(config: "Config") -> list[tuple[str, object]]:
    """(name, section) of the configured providers, in [phone] providers order."""
    order = config.phone.providers or list(PROVIDERS)
    return [(name, getattr(config, name)) for name in order if getattr(config, name) is not None]


# ---- references between sections -------------------------------------------


class _WholeConfig(Protocol):
    """What check_references reads of bot.config.Config (which holds these sections)."""

    people: list
    teams: list
    escalation: EscalationConfig
    oncall: dict[str, OnCallConfig]


def check_references(config: _WholeConfig) -> None:
    """People and teams named in escalation and on-call exist; raise ValueError naming the key."""
    people = {p.id for p in config.people}
    teams = {t.id for t in config.teams}
    for prio in PRIORITIES:
        policy = config.escalation.policy(prio)
        last: dict[tuple[str, str], tuple[int, timedelta]] = {}
        for i, step in enumerate(policy.steps):
            key = f"escalation.{prio}.steps[{i}]"
            for j, target in enumerate(step.targets):
                kind, _, ref = target.partition(":")
                if kind == "person" and ref not in people:
                    raise ValueError(f"{key}.targets[{j}]: unknown person {ref!r}")
                if kind == "oncall" and ref and ref not in teams:
                    raise ValueError(f"{key}.targets[{j}]: unknown team {ref!r}")
                if kind == "oncall" and ref and ref not in config.oncall:
                    raise ValueError(f"{key}.targets[{j}]: team {ref!r} has no [oncall.{ref}] schedule")
            chain = (step.state, step.since)
            if chain in last and step.after < last[chain][1]:
                prev, prev_after = last[chain]
                raise ValueError(f"{key}.after: {fmt_duration(step.after)} is earlier than steps[{prev}] "
                                 f"({fmt_duration(prev_after)}) of the same chain; order the steps by time")
            last[chain] = (i, step.after)
    for i, name in enumerate(config.phone.providers):
        if getattr(config, name) is None:
            raise ValueError(f"phone.providers[{i}]: {name!r} has no [{name}] section")
    for team_id, oc in config.oncall.items():
        key = f"oncall.{team_id}"
        if team_id not in teams:
            raise ValueError(f"{key}: unknown team {team_id!r}")
        for j, pid in enumerate(oc.rotation):
            if pid not in people:
                raise ValueError(f"{key}.rotation[{j}]: unknown person {pid!r}")
        for i, shift in enumerate(oc.shifts):
            for j, pid in enumerate(shift.rotation or ()):
                if pid not in people:
                    raise ValueError(f"{key}.shifts[{i}].rotation[{j}]: unknown person {pid!r}")
        for i, ov in enumerate(oc.overrides):
            for attr in ("person", "replaces"):
                pid = getattr(ov, attr)
                if pid is not None and pid not in people:
                    raise ValueError(f"{key}.overrides[{i}].{attr}: unknown person {pid!r}")


def fmt_duration(d: timedelta) -> str:
    """1 day -> "1d", 90 minutes -> "90m", 45 seconds -> "45s"."""
    s = int(d.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % size == 0 and s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"
