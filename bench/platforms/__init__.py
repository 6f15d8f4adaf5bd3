"""Platform modules for bench/callbacks.py.

Each module `bench/platforms/<platform>.py` provides:

    config_toml(fake_api_base: str, db_url: str) -> str
        The whole bot config for a run: the platform's section with `api_base`
        pointing at the fake API, `[playground] enabled = false`, a team whose
        engineers' group is on this platform, and people. Generous outbox
        limits are fine: the fake API has none.
    make_report(i: int) -> tuple[str, dict[str, str], bytes]
        Path + query, headers and body of a callback carrying a text report
        from customer i (a distinct sender per i), signed and encrypted exactly
        as the platform does. The report text must contain `report_key(i)`.
    is_card_send(path: str, body: bytes) -> str | None
        For a request the fake API received: the `report_key` of the report it
        is the engineer card for, else None (the harness times report -> card).
    fake_api_routes(record) -> list[aiohttp.web.RouteDef]
        The token endpoint and the send endpoints, answering success;
        `record(path, body)` is called for every request received.

A module may also define `WARMUP_TEXT` (unused by the harness otherwise).
"""
from __future__ import annotations

import importlib
from types import ModuleType

PLATFORMS = ("wecom", "feishu", "dingtalk")


def head_toml(db_url: str, *, server: str, poll_interval: str = "200ms") -> str:
    """The top of a bench config: unknown reporters allowed, `server` (lines of
    `[server]`), no playground, and an outbox with no practical per-chat limit
    (the fake API has none; measure the bot, not the throttle)."""
    return f'''database_url = "{db_url}"
allow_unknown_reporters = true

[server]
{server}

[playground]
enabled = false

[outbox]
per_recipient_per_minute = 1000000
poll_interval = "{poll_interval}"
'''


# The demo directory: (person id, name, role); phone numbers follow the order (13800000001...).
DEMO_PEOPLE = (
    ("cust_wang", "王经理", "customer"),
    ("eng_zhang", "张工", "engineer"),
    ("eng_li", "李工", "engineer"),
    ("lead_zhao", "赵组长", "lead"),
    ("director_sun", "孙总监", "director"),
)


def directory_toml(platform: str, ids: dict[str, str], group: str | None, *, region: str | None = "华东",
                   team_skills: tuple[str, ...] = ("泵", "电气"), skills: dict[str, tuple[str, ...]] | None = None,
                   phones: tuple[str, ...] = ()) -> str:
    """The `[[teams]]` and `[[people]]` part of a config.

    One team, "maint" (lead_zhao, director_sun), whose engineers' group on `platform`
    is `group` (None: no group), and those of `DEMO_PEOPLE` named in `ids` (person id
    -> their user id on `platform`), in that order. `region` goes on the team, the
    customer and the engineers; `skills` maps person ids to their skills; the people
    in `phones` get a phone number.
    """
    skills = skills or {}

    def array(values) -> str:
        return "[" + ", ".join(f'"{v}"' for v in values) + "]"

    team = ['[[teams]]', 'id = "maint"', 'name = "维修一组"']
    if region:
        team.append(f'region = "{region}"')
    team += [f"skills = {array(team_skills)}", 'lead = "lead_zhao"', 'director = "director_sun"']
    if group is not None:
        team.append(f'groups = {{ {platform} = "{group}" }}')
    blocks = ["\n".join(team)]
    for n, (pid, name, role) in enumerate(DEMO_PEOPLE, start=1):
        if pid not in ids:
            continue
        lines = ["[[people]]", f'id = "{pid}"', f'name = "{name}"', f'role = "{role}"']
        if role != "customer":
            lines.append('team = "maint"')
        if region and role in ("customer", "engineer"):
            lines.append(f'region = "{region}"')
        if pid in skills:
            lines.append(f"skills = {array(skills[pid])}")
        if pid in phones:
            lines.append(f'phone = "1380000000{n}"')
        lines.append(f'identities = {{ {platform} = "{ids[pid]}" }}')
        blocks.append("\n".join(lines))
    return "\n" + "\n\n".join(blocks) + "\n"


# Report texts with a `{key}` slot for report_key(i), and the team skills they call for.
KEYED_REPORTS = (
    "3号线水泵不出水了，整条线停着，设备编号 {key}",
    "空压机压力上不去，报警E203，设备 {key}，车间二楼",
    "配电柜跳闸了，整个车间没电，编号 {key}",
    "变频器报过流故障，电机停了，设备号 {key}",
)
KEYED_REPORT_SKILLS = ("泵", "电气", "变频器", "空压机")


def report_key(i: int) -> str:
    """The marker a report carries and its engineer card repeats (a fake device serial)."""
    return f"BX{i:06d}"


def find_report_key(text: str) -> str | None:
    import re

    m = re.search(r"BX\d{6}", text)
    return m.group(0) if m else None


def load(platform: str) -> ModuleType:
    if platform not in PLATFORMS:
        raise SystemExit(f"unknown platform {platform!r}; choose one of {', '.join(PLATFORMS)}")
    return importlib.import_module(f"bench.platforms.{platform}")
