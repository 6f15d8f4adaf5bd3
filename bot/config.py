"""Configuration: one TOML file plus RELAYDESK_* environment overrides.

Environment variables win over the file. Nested keys use a double underscore:
RELAYDESK_DATABASE_URL sets `database_url`, RELAYDESK_WECOM__SECRET sets
`[wecom] secret`. Durations are strings with units ("30s", "10m", "2h", "1h30m").
"""
from __future__ import annotations

import os
import string
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional

from pydantic import Field, ValidationError, field_validator, model_validator

from bot.config_types import Duration, Section as _Section
from api.config import ApiConfig, IntegrationConfig, StatusHubConfig, WebhooksConfig
from escalation.config import (AliyunConfig, EscalationConfig, OnCallConfig, PhoneConfig, TencentConfig,
                               TwilioConfig, check_references)
from reports.config import ReportsConfig, check_references as check_report_references

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default_config.toml")
ENV_PREFIX = "RELAYDESK_"


class ConfigError(ValueError):
    """A configuration problem, worded for the person editing the file."""


Priority = Literal["P0", "P1", "P2"]
# What a process does besides answering: apply accepted messages (inbox), deliver the
# outbox (outbox), run the escalation sweep and the scheduled reports (escalation).
WorkerRole = Literal["inbox", "outbox", "escalation"]
WORKER_ROLES: tuple[WorkerRole, ...] = ("inbox", "outbox", "escalation")


def worker_roles(value: Any) -> Any:
    """true/false, "all"/"none", a comma-separated string or a list -> the roles in their
    canonical order (anything else is left for validation to refuse)."""
    if isinstance(value, bool):
        return WORKER_ROLES if value else ()
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "all"):
            return WORKER_ROLES
        if word in ("false", "none", ""):
            return ()
        value = [part.strip() for part in word.split(",")]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        unknown = [v for v in value if v not in WORKER_ROLES]
        if unknown:
            return tuple(value)  # refused by the Literal, naming the key
        return tuple(role for role in WORKER_ROLES if role in value)
    return value
Role = Literal["customer", "engineer", "lead", "director", "manager", "admin"]


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    # A request body must have arrived in full within this time (408 otherwise): the
    # platforms post a few KiB from their data centres; a trickled body is an attack.
    body_timeout: Duration = timedelta(seconds=1)
    public_url: str = "http://127.0.0.1:8080"
    # The workers this process runs besides answering: true (all of them), false (none:
    # `python run_bot.py worker` processes do the work) or a list of WORKER_ROLES. The
    # split that keeps numbers fast in an incident (on PostgreSQL): ["inbox"] here, and a
    # worker process for the rest (`run_bot.py worker --roles outbox,escalation`).
    workers: tuple[WorkerRole, ...] = WORKER_ROLES

    @field_validator("workers", mode="before")
    @classmethod
    def _roles(cls, value: Any) -> Any:
        return worker_roles(value)


class DeadlineConfig(_Section):
    respond: Duration
    resolve: Duration


def _default_deadlines() -> dict[str, DeadlineConfig]:
    return {
        "P0": DeadlineConfig(respond="10m", resolve="4h"),
        "P1": DeadlineConfig(respond="30m", resolve="24h"),
        "P2": DeadlineConfig(respond="4h", resolve="72h"),
    }


class IncidentsConfig(_Section):
    """Reports of one incident: same category and place while a ticket about it is open."""

    enabled: bool = True
    window: Duration = timedelta(minutes=30)


class TicketsConfig(_Section):
    domain: str = Field(default="SRV", pattern=r"^[A-Z]{2,6}$")
    timezone: str = "Asia/Shanghai"
    deadlines: dict[Priority, DeadlineConfig] = Field(default_factory=_default_deadlines)
    # Evidence before 完工 (bot/core/evidence.py): photos taken after 开始维修.
    # The category's number wins over the priority's, which wins over min_photos.
    min_photos: int = Field(default=2, ge=0, le=20)
    min_photos_by_priority: dict[Priority, Annotated[int, Field(ge=0, le=20)]] = Field(default_factory=dict)
    min_photos_by_category: dict[str, Annotated[int, Field(ge=0, le=20)]] = Field(
        default_factory=lambda: {"software": 0, "office_it": 0})
    # 完工 must carry a note saying what was done ("完工 更换了机封，试机正常").
    require_resolution_note: bool = True

    @model_validator(mode="after")
    def _all_priorities(self):
        missing = {"P0", "P1", "P2"} - set(self.deadlines)
        if missing:
            raise ValueError(f"deadlines missing for {', '.join(sorted(missing))}")
        return self


class OutboxConfig(_Section):
    max_attempts: int = Field(default=12, ge=1)
    base_delay: Duration = timedelta(seconds=2)
    max_delay: Duration = timedelta(minutes=10)
    lease: Duration = timedelta(seconds=60)
    poll_interval: Duration = timedelta(seconds=1)
    # Per recipient and channel; unset: each channel's documented platform limits.
    per_recipient_per_minute: Optional[int] = Field(default=None, ge=1)
    # Leases of a process whose heartbeat is older than this are taken back.
    takeover_grace: Duration = timedelta(seconds=3)
    # A channel is marked down after this many failed sends in a row, then probed.
    down_after: int = Field(default=3, ge=1)
    probe_interval: Duration = timedelta(seconds=5)
    # A recipient at its limit with this many new-ticket cards queued gets one digest card instead (0: never).
    digest_after: int = Field(default=3, ge=0)


class RetentionConfig(_Section):
    """How long finished bookkeeping rows are kept (days; 0 keeps them for ever).

    Pruned by a periodic job in bounded batches (storage/retention.py); rows still
    needed (pending or dead, cards of live tickets, keys inside their window) stay.
    """

    interval: Duration = timedelta(hours=1)
    batch: int = Field(default=1000, ge=1, le=100_000)
    outbox_days: int = Field(default=14, ge=0)
    processed_event_days: int = Field(default=7, ge=0)
    inbox_days: int = Field(default=7, ge=0)
    card_action_days: int = Field(default=90, ge=0)
    phone_call_days: int = Field(default=90, ge=0)
    api_idempotency_days: int = Field(default=30, ge=0)
    process_heartbeat_days: int = Field(default=7, ge=0)
    periodic_job_days: int = Field(default=60, ge=0)


class NlpConfig(_Section):
    taxonomy: Optional[Path] = None
    sop: Optional[Path] = None


class PlaygroundConfig(_Section):
    enabled: bool = True


class TeamConfig(_Section):
    id: str
    name: str
    region: Optional[str] = None
    # Category ids (nlp/data/taxonomy.toml) the team is good at, for dispatch.
    skills: list[str] = Field(default_factory=list)
    # An outside service provider: its cards count down to its own deadlines
    # (its SLA per priority), which replace [tickets.deadlines] for its tickets.
    provider: bool = False
    sla: dict[Priority, DeadlineConfig] = Field(default_factory=dict)
    lead: Optional[str] = None
    director: Optional[str] = None
    # Engineers' group chat per channel, e.g. {playground = "engineers", wecom = "wrk..."}
    groups: dict[str, str] = Field(default_factory=dict)


class PersonConfig(_Section):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    name: str
    role: Role
    team: Optional[str] = None
    region: Optional[str] = None
    skills: list[str] = Field(default_factory=list)
    phone: Optional[str] = None
    # User id per platform: {wecom = "zhangsan", feishu = "ou_...", dingtalk = "0123"}
    identities: dict[str, str] = Field(default_factory=dict)


class WeComConfig(_Section):
    """A WeCom self-built app (自建应用)."""

    corp_id: str
    agent_id: int
    secret: str
    token: str
    encoding_aes_key: str = Field(min_length=43, max_length=43)
    api_base: str = "https://qyapi.weixin.qq.com"
    engineers_chat: Optional[str] = None  # appchat chatid of the engineers' group
    robot_webhook_key: Optional[str] = None  # group robot, for @mentions
    # Callbacks whose timestamp is further than this from now are refused (403);
    # "0s" turns the check off (only for replaying recorded callbacks).
    replay_window: Duration = timedelta(minutes=5)
    # More groups with a robot: chatid -> robot webhook key. `robot_webhook_key`
    # serves `engineers_chat` (or every group when engineers_chat is unset).
    robot_webhooks: dict[str, str] = Field(default_factory=dict)
    # Where pictures users send are stored (default <data dir>/wecom-media).
    media_dir: Optional[Path] = None
    # WeCom silently drops app messages beyond 30 a minute per member; sends
    # above this are handed back to the outbox to retry later. 0 = no limit.
    member_per_minute: int = Field(default=30, ge=0)


class FeishuConfig(_Section):
    """A Feishu (or Lark: api_base = "https://open.larksuite.com") app."""

    app_id: str
    app_secret: str
    # "callback": Feishu posts to /callbacks/feishu (needs a public HTTPS URL);
    # "stream": the bot opens Feishu's long connection and receives events and clicks on it.
    mode: Literal["callback", "stream"] = "callback"
    verification_token: str = ""  # callback mode only
    encrypt_key: Optional[str] = None
    api_base: str = "https://open.feishu.cn"
    engineers_chat: Optional[str] = None  # chat_id (oc_...)
    # The bot's own open_id, to tell "@bot" from "@someone" in group messages;
    # looked up with GET /open-apis/bot/v3/info when not set.
    bot_open_id: Optional[str] = None

    @model_validator(mode="after")
    def _callback_needs_token(self):
        if self.mode == "callback" and not self.verification_token:
            raise ValueError("verification_token is required in callback mode (开发者后台 → 事件与回调 → 加密策略)")
        return self


class DingTalkConfig(_Section):
    """A DingTalk enterprise app with its robot (HTTP mode)."""

    app_key: str  # also the robotCode
    app_secret: str
    # "callback": DingTalk posts to /callbacks/dingtalk (needs a public HTTPS URL);
    # "stream": the bot opens an outbound WebSocket and receives messages and clicks on it.
    mode: Literal["callback", "stream"] = "callback"
    robot_code: Optional[str] = None  # defaults to app_key
    # Event subscription (address-book events), encrypted like WeCom's.
    event_token: Optional[str] = None
    event_aes_key: Optional[str] = Field(default=None, min_length=43, max_length=43)
    corp_id: Optional[str] = None
    # The key the event envelope is encrypted for ("OWNER_KEY"): the app_key for a
    # subscription set in the developer console (the default), the corp_id for
    # callbacks registered through the API, the suiteKey for third-party apps.
    event_owner_key: Optional[str] = None
    # Interactive cards: a template built in DingTalk's card platform.
    card_template_id: Optional[str] = None
    card_callback_route_key: Optional[str] = None
    card_api_secret: Optional[str] = None
    # How the person who clicked a card button hears the result ("认领成功" or
    # why not): "message" = a 1:1 robot message, "card" = only the template's
    # private `toast` variable (the template must show it).
    click_feedback: Literal["message", "card"] = "message"
    api_base: str = "https://api.dingtalk.com"
    oapi_base: str = "https://oapi.dingtalk.com"
    engineers_chat: Optional[str] = None  # openConversationId
    sign_window: Duration = timedelta(hours=1)

    @model_validator(mode="after")
    def _complete(self):
        if bool(self.event_token) != bool(self.event_aes_key):
            raise ValueError("event subscription needs both event_token and event_aes_key")
        if self.card_template_id and self.mode == "callback" and not (self.card_callback_route_key
                                                                      and self.card_api_secret):
            raise ValueError("card_template_id needs card_callback_route_key and card_api_secret "
                             "(the route key and apiSecret registered with /v1.0/card/callbacks/register)")
        return self

    @property
    def owner_key(self) -> str:
        return self.event_owner_key or self.app_key


class DispatchConfig(_Section):
    """How the suggested engineer is chosen (bot/core/dispatch.py).

    `regions` names the places of each region as a phone number's location is
    written ("上海", "江苏"), so a customer whose region the directory does not
    know is placed by the location of their mobile number.
    """

    regions: dict[str, list[str]] = Field(default_factory=dict)
    # Weights of the score; the highest score is suggested.
    skill_weight: float = 4.0
    region_weight: float = 2.0
    oncall_weight: float = 1.5
    load_weight: float = 1.0  # subtracted per ticket in hand


class FollowUpStepConfig(_Section):
    """`after` this long past the follow-up's deadline, remind `targets` (team roles)."""

    after: Duration = timedelta(0)
    targets: list[Literal["lead", "director"]] = Field(default_factory=lambda: ["director"], min_length=1)


class FollowUpConfig(_Section):
    """A low rating opens a follow-up task for the team lead (bot/core/followup.py)."""

    enabled: bool = True
    threshold: int = Field(default=2, ge=1, le=5)  # ratings at or below this open one
    deadline: Duration = timedelta(hours=48)
    # Its own escalation policy, counted from the deadline.
    steps: list[FollowUpStepConfig] = Field(default_factory=lambda: [FollowUpStepConfig()])
    check_interval: Duration = timedelta(minutes=1)


# The ticket fields a probe URL template may use.
PROBE_FIELDS = ("number", "id", "category", "priority", "location", "serial", "team")


class ProbeConfig(_Section):
    """A resolution check (bot/core/probe.py): an HTTP GET that must answer
    `expect_status` before a ticket of `team` / `category` counts as resolved.

    `url` is a template with the ticket's fields: {number}, {category},
    {priority}, {location}, {serial}, {team}, {id} (URL-quoted).
    """

    url: str = Field(min_length=1)
    team: Optional[str] = None
    category: Optional[str] = None
    expect_status: int = Field(default=200, ge=100, le=599)
    timeout: Duration = timedelta(seconds=5)
    retries: int = Field(default=1, ge=0, le=5)
    retry_delay: Duration = timedelta(seconds=1)

    @model_validator(mode="after")
    def _bounded(self):
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        total = (self.timeout + self.retry_delay).total_seconds() * (self.retries + 1)
        if self.timeout.total_seconds() <= 0 or total > 60:
            raise ValueError("timeout must be above 0s and (timeout + retry_delay) x (retries + 1) at most 60s "
                             "(the ticket waits in 待验证 for the check)")
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(self.url) if name is not None}
        except ValueError as e:
            raise ValueError(f"url: {e}") from None
        unknown = sorted(names - set(PROBE_FIELDS))
        if unknown:
            raise ValueError(f"url: unknown field {{{unknown[0]}}} (use {', '.join('{%s}' % f for f in PROBE_FIELDS)})")
        return self




class Config(_Section):
    database_url: str = "sqlite+aiosqlite:///./data/relaydesk.db"
    server: ServerConfig = Field(default_factory=ServerConfig)
    tickets: TicketsConfig = Field(default_factory=TicketsConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    incidents: IncidentsConfig = Field(default_factory=IncidentsConfig)
    nlp: NlpConfig = Field(default_factory=NlpConfig)
    playground: PlaygroundConfig = Field(default_factory=PlaygroundConfig)
    # Unknown senders become customers who may report and follow their tickets.
    allow_unknown_reporters: bool = True
    wecom: Optional[WeComConfig] = None
    feishu: Optional[FeishuConfig] = None
    dingtalk: Optional[DingTalkConfig] = None
    teams: list[TeamConfig] = Field(default_factory=list)
    people: list[PersonConfig] = Field(default_factory=list)
    escalation: EscalationConfig = Field(default_factory=EscalationConfig)
    oncall: dict[str, OnCallConfig] = Field(default_factory=dict)  # team id -> schedule
    phone: PhoneConfig = Field(default_factory=PhoneConfig)
    aliyun: Optional[AliyunConfig] = None
    tencent: Optional[TencentConfig] = None
    twilio: Optional[TwilioConfig] = None
    reports: ReportsConfig = Field(default_factory=ReportsConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    status_hub: StatusHubConfig = Field(default_factory=StatusHubConfig)
    integrations: dict[str, IntegrationConfig] = Field(default_factory=dict)  # system name -> its states
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    followup: FollowUpConfig = Field(default_factory=FollowUpConfig)
    probes: list[ProbeConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_refs(self):
        ids = [p.id for p in self.people]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"people: duplicate id {dupes[0]!r}")
        team_ids = {t.id for t in self.teams}
        known = set(ids)
        for i, p in enumerate(self.people):
            if p.team is not None and p.team not in team_ids:
                raise ValueError(f"people[{i}].team: unknown team {p.team!r}")
        for i, t in enumerate(self.teams):
            for key in ("lead", "director"):
                ref = getattr(t, key)
                if ref is not None and ref not in known:
                    raise ValueError(f"teams[{i}].{key}: unknown person {ref!r}")
        for i, pr in enumerate(self.probes):
            if pr.team is not None and pr.team not in team_ids:
                raise ValueError(f"probes[{i}].team: unknown team {pr.team!r}")
        for i, t in enumerate(self.teams):
            if t.sla and set(t.sla) != {"P0", "P1", "P2"}:
                missing = ", ".join(sorted({"P0", "P1", "P2"} - set(t.sla)))
                raise ValueError(f"teams[{i}].sla: deadlines missing for {missing}")
        check_references(self)
        check_report_references(self.reports, (t.id for t in self.teams))
        return self

    def team(self, team_id: str | None) -> TeamConfig | None:
        return next((t for t in self.teams if t.id == team_id), None)


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "DATA_DIR":
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path or path[0] not in Config.model_fields:
            continue
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def _format_error(source: str, err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e["loc"]).replace(".[", "[")
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    key = f"{loc}: " if loc else ""
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"{source}: {key}{msg}{more}"


def load_config(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (or the embedded default) and apply the environment."""
    env = os.environ if env is None else env
    source = str(path) if path is not None else "embedded default config"
    file = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    raw = _merge(raw, _env_overrides(env))
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(source, e)) from None
