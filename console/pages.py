"""HTML of the console and the tracking page: server-rendered, no scripts.

Every value is escaped; every link inside the console carries the same signed
token, so the pages never need a cookie or a login.
"""
from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Iterable, Sequence
from urllib.parse import urlencode

from bot.texts import t
from cards.model import Card

CSS_PATH = "/console/console.css"


def _page(title: str, body: str, *, mobile: bool = False) -> str:
    cls = "mobile" if mobile else "wide"
    return (
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta name=\"referrer\" content=\"no-referrer\">"
        f"<title>{escape(title)}</title><link rel=\"stylesheet\" href=\"{CSS_PATH}\"></head>"
        f"<body class=\"{cls}\">{body}</body></html>"
    )


def refused_page(reason: str) -> str:
    """The 403 page: forged or expired, and what to do."""
    return _page(t("console.refused_title"), (
        f"<main class=\"refused\"><h1>{escape(t('console.refused_title'))}</h1>"
        f"<p data-reason=\"{escape(reason)}\">{escape(t(f'console.refused_{reason}'))}</p>"
        f"<p>{escape(t('console.refused_hint'))}</p></main>"))


def not_found_page() -> str:
    return _page(t("console.not_found"), f"<main class=\"refused\"><h1>{escape(t('console.not_found'))}</h1></main>")


@dataclass(frozen=True)
class Row:
    number: str
    priority: str
    state: str
    category: str
    team: str
    owner: str
    reported: str
    due: str
    overdue: bool


@dataclass(frozen=True)
class Filters:
    team: str = ""
    priority: str = ""
    state: str = ""
    overdue: bool = False


def _link(path: str, token: str, **params: str) -> str:
    query = {"t": token, **{k: v for k, v in params.items() if v}}
    return escape(f"{path}?{urlencode(query)}")


def _nav(token: str, viewer: str, expires: str, active: str) -> str:
    items = [("tickets", "/console"), ("charts", "/console/charts")]
    links = "".join(
        f"<a class=\"{'on' if key == active else ''}\" href=\"{_link(path, token)}\">{escape(t(f'console.nav_{key}'))}</a>"
        for key, path in items)
    return (f"<header><strong>{escape(t('console.title'))}</strong><nav>{links}</nav>"
            f"<span class=\"who\">{escape(t('console.viewer', name=viewer, until=expires))}</span></header>")


def _options(selected: str, choices: Iterable[tuple[str, str]]) -> str:
    out = [f"<option value=\"\">{escape(t('console.any'))}</option>"]
    for value, label in choices:
        sel = " selected" if value == selected else ""
        out.append(f"<option value=\"{escape(value)}\"{sel}>{escape(label)}</option>")
    return "".join(out)


def tickets_page(token: str, viewer: str, expires: str, rows: Sequence[Row], f: Filters,
                 teams: Sequence[tuple[str, str]], states: Sequence[tuple[str, str]]) -> str:
    priorities = [(p, t(f"priority.{p}")) for p in ("P0", "P1", "P2")]
    form = (
        f"<form class=\"filters\" method=\"get\" action=\"/console\">"
        f"<input type=\"hidden\" name=\"t\" value=\"{escape(token)}\">"
        f"<label>{escape(t('console.team'))}<select name=\"team\">{_options(f.team, teams)}</select></label>"
        f"<label>{escape(t('console.priority'))}<select name=\"priority\">{_options(f.priority, priorities)}</select></label>"
        f"<label>{escape(t('console.state'))}<select name=\"state\">{_options(f.state, states)}</select></label>"
        f"<label class=\"check\"><input type=\"checkbox\" name=\"overdue\" value=\"1\"{' checked' if f.overdue else ''}>"
        f"{escape(t('console.overdue_only'))}</label>"
        f"<button type=\"submit\">{escape(t('console.apply'))}</button></form>"
    )
    head = "".join(f"<th>{escape(t(f'console.col_{c}'))}</th>" for c in
                   ("number", "priority", "state", "category", "team", "owner", "reported", "due"))
    body = []
    for r in rows:
        cls = " class=\"overdue\"" if r.overdue else ""
        body.append(
            f"<tr{cls} data-number=\"{escape(r.number)}\"><td><a href=\"{_link('/console/ticket/' + r.number, token)}\">"
            f"{escape(r.number)}</a></td><td>{escape(r.priority)}</td><td>{escape(r.state)}</td>"
            f"<td>{escape(r.category)}</td><td>{escape(r.team)}</td><td>{escape(r.owner)}</td>"
            f"<td>{escape(r.reported)}</td><td>{escape(r.due)}</td></tr>")
    table = (f"<table class=\"tickets\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
             if rows else f"<p class=\"empty\">{escape(t('console.no_tickets'))}</p>")
    count = f"<p class=\"count\">{escape(t('console.count', n=len(rows)))}</p>"
    return _page(t("console.title"), _nav(token, viewer, expires, "tickets") + f"<main>{form}{count}{table}</main>")


def _timeline(card: Card) -> str:
    steps = "".join(
        f"<li class=\"{escape(s.state)}\"><span class=\"dot\"></span><span class=\"label\">{escape(s.label)}</span>"
        f"<span class=\"at\">{escape(s.at or '')}</span></li>" for s in card.timeline)
    return f"<ol class=\"timeline\">{steps}</ol>"


def _fields(card: Card) -> str:
    return "<dl class=\"fields\">" + "".join(
        f"<dt>{escape(fl.label)}</dt><dd>{escape(fl.value)}</dd>" for fl in card.fields) + "</dl>"


@dataclass(frozen=True)
class AuditRow:
    at: str
    who: str
    action: str
    channel: str
    via: str
    change: str
    detail: str


def ticket_page(token: str, viewer: str, expires: str, number: str, summary: str, card: Card,
                audit: Sequence[AuditRow], photos: Sequence[str]) -> str:
    head = "".join(f"<th>{escape(t(f'console.audit_{c}'))}</th>" for c in
                   ("at", "who", "action", "channel", "via", "change", "detail"))
    rows = "".join(
        f"<tr><td>{escape(a.at)}</td><td>{escape(a.who)}</td><td>{escape(a.action)}</td><td>{escape(a.channel)}</td>"
        f"<td>{escape(a.via)}</td><td>{escape(a.change)}</td><td>{escape(a.detail)}</td></tr>" for a in audit)
    pics = ("".join(f"<img src=\"{escape(src)}\" alt=\"\">" for src in photos) if photos
            else f"<p class=\"empty\">{escape(t('console.no_photos'))}</p>")
    body = (
        f"<main class=\"ticket\"><h1>{escape(number)}</h1><p class=\"summary\">{escape(summary)}</p>"
        f"{_fields(card)}<h2>{escape(t('console.timeline'))}</h2>{_timeline(card)}"
        f"<h2>{escape(t('console.photos'))}</h2><div class=\"photos\">{pics}</div>"
        f"<h2>{escape(t('console.audit'))}</h2><table class=\"audit\"><thead><tr>{head}</tr></thead>"
        f"<tbody>{rows}</tbody></table></main>")
    return _page(f"{number} · {t('console.title')}", _nav(token, viewer, expires, "") + body)


def charts_page(token: str, viewer: str, expires: str, charts: Sequence[tuple[str, str | None, str]]) -> str:
    """`charts`: (title, data: URI of the PNG or None, text shown with it)."""
    parts = []
    for title, uri, text in charts:
        img = f"<img src=\"{escape(uri)}\" alt=\"{escape(title)}\">" if uri else ""
        parts.append(f"<section class=\"chart\"><h2>{escape(title)}</h2>{img}<pre>{escape(text)}</pre></section>")
    return _page(t("console.nav_charts"), _nav(token, viewer, expires, "charts") + f"<main>{''.join(parts)}</main>")


def tracking_page(number: str, summary: str, card: Card, expires: str) -> str:
    """The customer's page: the six nodes with their times, fields of the status card, nothing internal."""
    body = (
        f"<main class=\"track\"><h1>{escape(t('console.track_title'))}</h1><p class=\"number\">{escape(number)}</p>"
        f"<p class=\"summary\">{escape(summary)}</p>{_fields(card)}{_timeline(card)}"
        f"<p class=\"foot\">{escape(t('console.track_foot', until=expires))}</p></main>")
    return _page(t("console.track_title"), body, mobile=True)
