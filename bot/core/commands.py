"""Text commands: what a chat message asks for, so text alone is enough."""
from __future__ import annotations

import re
from dataclasses import dataclass

from bot.core.numbers import find_number

# Keyword -> command. Longer keywords are tried first.
KEYWORDS: dict[str, str] = {
    "认领": "claim", "接单": "claim",
    "转交": "transfer", "转派": "transfer", "转给": "transfer",
    "加急": "escalate", "催单": "escalate", "催一下": "escalate",
    "出发": "depart", "已出发": "depart",
    "到达": "arrive", "已到达": "arrive", "到场": "arrive",
    "开始维修": "start_repair", "维修中": "start_repair",
    "完工": "resolve", "已完工": "resolve",
    "进度": "progress", "查询": "progress", "查单": "progress",
    "我的工单": "my_tickets", "我的单": "my_tickets",
    "评价": "rate",
    "帮助": "help", "help": "help", "菜单": "help", "?": "help", "？": "help",
    "取消": "cancel", "撤单": "cancel",
    "重开": "reopen", "重新打开": "reopen",
    "备注": "note",
    "补充": "addition",
    "报修": "report",
    "确认": "ack", "收到处理": "ack",
    "值班": "oncall",
    "解冻": "unfreeze",
    "回访完成": "followup_done", "已回访": "followup_done",
    "记录": "trail", "操作记录": "trail",
}
_ORDERED = sorted(KEYWORDS, key=len, reverse=True)
_CN_DIGITS = {"一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5}
# What may follow a keyword for it to be a command, not the start of a sentence.
_BOUNDARY = re.compile(r"$|[\s:：,，@＠]|SRV|[A-Z]{2,6}-\d", re.I)
_LEADING_MENTION = re.compile(r"^(?:[@＠]\S+\s*)+")

# Commands a customer may use; everything else is staff-only.
CUSTOMER_COMMANDS = frozenset(
    {"progress", "my_tickets", "rate", "help", "cancel", "reopen", "addition", "report", "escalate", "trail"}
)


@dataclass(frozen=True)
class Command:
    name: str
    arg: str = ""  # the text after the keyword, ticket number removed
    number: str | None = None
    stars: int | None = None


def parse_command(text: str) -> Command | None:
    s = _LEADING_MENTION.sub("", text.strip()).strip()
    s = s.lstrip("/#")
    low = s.lower()
    for kw in _ORDERED:
        if low.startswith(kw.lower()) and _BOUNDARY.match(s, len(kw)):
            name = KEYWORDS[kw]
            rest = s[len(kw):].strip(" :：,，")
            number = find_number(rest)
            if number:
                rest = rest.replace(number, " ", 1).strip(" :：,，")
            stars = _stars(rest) if name == "rate" else None
            return Command(name, rest, number, stars)
    # A bare rating like "5星" / "五星好评".
    m = re.fullmatch(r"([1-5一二三四五])\s*(?:星|分)(?:好评|差评)?[!！。]*", s)
    if m:
        return Command("rate", "", None, _stars(m.group(1)))
    return None


def _stars(text: str) -> int | None:
    m = re.match(r"\s*([1-5一二两三四五])", text)
    if not m:
        return None
    ch = m.group(1)
    return int(ch) if ch.isdigit() else _CN_DIGITS[ch]
