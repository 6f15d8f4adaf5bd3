"""Figures as the short Chinese texts people read in chat."""
from __future__ import annotations

from typing import Any

from bot.texts import t
from reports.figures import change, worst_cells


def duration(seconds: float | None) -> str:
    if seconds is None:
        return t("reports.none")
    if seconds < 3600:
        return t("reports.minutes", n=max(0, round(seconds / 60)))
    if seconds < 2 * 86400:
        return t("reports.hours", n=f"{seconds / 3600:.1f}".rstrip("0").rstrip("."))
    return t("reports.days", n=f"{seconds / 86400:.1f}".rstrip("0").rstrip("."))


def percent(rate: float | None) -> str:
    return t("reports.none") if rate is None else f"{rate * 100:.0f}%"


def _delta(kind: str, today: dict, before: dict | None, key: str) -> str:
    if before is None:
        return ""
    d = change(today, before, key)
    if d is None:
        return t("reports.delta_none")
    sign = "+" if d > 0 else ("±" if d == 0 else "-")
    d = abs(d)
    if kind == "count":
        value = f"{d:.0f}"
    elif kind == "rate":
        value = t("reports.points", n=f"{d * 100:.0f}")
    else:
        value = duration(d)
    return t("reports.delta", sign=sign, value=value)


def daily_text(team_name: str, day_label: str, today: dict[str, Any], before: dict[str, Any] | None) -> str:
    """The daily health report: yesterday's figures and their change from the day before."""
    return summary_text(t("reports.daily_title", team=team_name, date=day_label), today, before)


def summary_text(title: str, today: dict[str, Any], before: dict[str, Any] | None) -> str:
    """A period's figures under `title`, with the change from `before` when given."""
    sep = t("reports.separator")
    lines = [title]
    counts = [t("reports.reports", n=today["reports"], delta=_delta("count", today, before, "reports")),
              t("reports.resolved", n=today["resolved"], delta=_delta("count", today, before, "resolved")),
              t("reports.backlog", n=today["backlog"], delta=_delta("count", today, before, "backlog"))]
    if today.get("oldest_open"):
        counts.append(t("reports.oldest", number=today["oldest_open"]["number"],
                        age=duration(today["oldest_open"]["age_s"])))
    lines.append(sep.join(counts))
    lines.append(sep.join([
        t("reports.mtta", value=duration(today["mtta_s"]), delta=_delta("time", today, before, "mtta_s")),
        t("reports.mttr", value=duration(today["mttr_s"]), delta=_delta("time", today, before, "mttr_s")),
    ]))
    lines.append(sep.join([
        t("reports.sla_response", value=percent(today["sla_response_rate"]),
          delta=_delta("rate", today, before, "sla_response_rate")),
        t("reports.sla_resolve", value=percent(today["sla_resolve_rate"]),
          delta=_delta("rate", today, before, "sla_resolve_rate")),
        t("reports.fsr", value=percent(today["fsr"]), delta=_delta("rate", today, before, "fsr")),
    ]))
    rating = (t("reports.rating", value=f"{today['rating_avg']:.1f}", count=today["ratings"],
                low=today["low_ratings"]) if today["rating_avg"] is not None else t("reports.no_rating"))
    follow = (t("reports.follow_ups", open=today["follow_ups_open"], overdue=today["follow_ups_overdue"])
              if today.get("follow_ups_open") is not None else t("reports.follow_ups_none"))
    lines.append(sep.join([rating, follow]))
    return "\n".join(lines)


def per_person_lines(figures: dict[str, Any]) -> list[str]:
    out = []
    for p in figures["per_person"]:
        out.append(t("reports.person_line", person=p["person"], claimed=p["claimed"], resolved=p["resolved"],
                     mtta=duration(p["mtta_s"]), fsr=percent(p["fsr"]),
                     rating=t("reports.none") if p["rating_avg"] is None else f"{p['rating_avg']:.1f}",
                     sleep=p["interruptions"]["sleep"]))
    return out


def heat_text(month: str, grids: list[tuple[str, dict]], row_names: dict[str, str]) -> str:
    """The heat map's caption text: its title and the worst cells named."""
    cells = []
    for _, grid in grids:
        for row, stage, seconds in worst_cells(grid, 2):
            cells.append(t("reports.heat_cell", row=row_names.get(row, row), stage=t(f"reports.stage.{stage}"),
                           value=duration(seconds)))
    return "\n".join([t("reports.heat_title", month=month), t("reports.heat_worst", cells="；".join(cells))])
