"""Report charts as PNG files, drawn server-side with matplotlib.

Chinese labels need a CJK font, which a fresh machine often lacks (matplotlib
then draws empty boxes). The font comes with the `mplfonts` package (Noto Sans
CJK SC Regular, SIL Open Font License); it is registered with matplotlib by
path, so nothing is copied into matplotlib's install or rc files. (The service
report PDF's variable Noto Sans SC is no use here: matplotlib cannot choose a
weight of a variable font and draws it at its thinnest.) Figures are built
with the object API (no pyplot state), so charts can be drawn from threads.
"""
from __future__ import annotations

import math
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, fontManager
from matplotlib.ticker import MaxNLocator

from bot.texts import t
from reports.figures import STAGES
from reports.fonts import cjk_font_file

DPI = 110


@lru_cache(maxsize=1)
def cjk_font_path() -> Path:
    """The bundled CJK font file, registered with matplotlib once."""
    path = cjk_font_file()
    fontManager.addfont(str(path))
    return path


def _family(font: Path | None) -> list[str]:
    """Font families to draw with; None draws with matplotlib's default only (tests)."""
    if font is None:
        return ["DejaVu Sans"]
    fontManager.addfont(str(font))
    return [FontProperties(fname=str(font)).get_name(), "DejaVu Sans"]


def _figure(width: float, height: float, font: Path | None | bool) -> tuple[Figure, dict[str, Any]]:
    """A figure and the text style (font families) every label of it uses.

    `font`: True = the bundled CJK font, a path = that font, None/False = none.
    """
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.set_layout_engine("constrained")
    path = cjk_font_path() if font is True else (font or None)
    return fig, {"family": _family(path)}


def _save(fig: Figure, path: Path) -> Path:
    """Write atomically: another process may be drawing the same chart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=DPI)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _pct(v: float | None) -> float:
    return 0.0 if v is None else v * 100


def daily_chart(path: Path, title: str, today: dict, before: dict, *, font: Path | None | bool = True) -> Path:
    """Yesterday against the day before (rates, counts), and yesterday per person."""
    fig, st = _figure(9.0, 4.6, font)
    fig.suptitle(title, fontsize=14, **st)
    left, mid, right = fig.subplots(1, 3, width_ratios=[1.2, 1.0, 1.3])

    rate_keys = ("sla_response_rate", "sla_resolve_rate", "fsr")
    labels = [t(f"reports.chart.{k}") for k in rate_keys]
    x = range(len(rate_keys))
    w = 0.38
    left.bar([i - w / 2 for i in x], [_pct(before.get(k)) for k in rate_keys], w, color="#b0bec5",
             label=t("reports.chart.day_before"))
    bars = left.bar([i + w / 2 for i in x], [_pct(today.get(k)) for k in rate_keys], w, color="#1e88e5",
                    label=t("reports.chart.yesterday"))
    for b, k in zip(bars, rate_keys):
        v = today.get(k)
        left.annotate("—" if v is None else f"{v * 100:.0f}%", (b.get_x() + b.get_width() / 2, b.get_height()),
                      ha="center", va="bottom", fontsize=9, **st)
    left.set_xticks(list(x), labels, **st)
    left.set_ylim(0, 128)
    left.set_yticks(range(0, 101, 20))
    left.set_ylabel("%", **st)
    left.set_title(t("reports.chart.rates"), **st)
    left.legend(prop={"family": st["family"], "size": 8}, ncols=2, loc="upper center")

    count_keys = ("reports", "resolved", "backlog", "low_ratings")
    x = range(len(count_keys))
    mid.bar([i - w / 2 for i in x], [before.get(k) or 0 for k in count_keys], w, color="#b0bec5")
    bars = mid.bar([i + w / 2 for i in x], [today.get(k) or 0 for k in count_keys], w, color="#43a047")
    for b in bars:
        mid.annotate(f"{int(b.get_height())}", (b.get_x() + b.get_width() / 2, b.get_height()),
                     ha="center", va="bottom", fontsize=9, **st)
    mid.set_xticks(list(x), [t(f"reports.chart.{k}") for k in count_keys], **st)
    top = max([before.get(k) or 0 for k in count_keys] + [today.get(k) or 0 for k in count_keys] + [1])
    mid.set_ylim(0, top * 1.2)
    mid.yaxis.set_major_locator(MaxNLocator(integer=True))
    mid.set_title(t("reports.chart.counts"), **st)

    people = today.get("per_person") or []
    if people:
        names = [p["person"] for p in people]
        y = range(len(people))
        right.barh([i - 0.2 for i in y], [p["claimed"] for p in people], 0.4, color="#fb8c00",
                   label=t("reports.chart.claimed"))
        right.barh([i + 0.2 for i in y], [p["resolved"] for p in people], 0.4, color="#1e88e5",
                   label=t("reports.chart.resolved"))
        for i, p in enumerate(people):
            right.annotate(str(p["claimed"]), (p["claimed"], i - 0.2), va="center", fontsize=8,
                           xytext=(3, 0), textcoords="offset points")
            right.annotate(str(p["resolved"]), (p["resolved"], i + 0.2), va="center", fontsize=8,
                           xytext=(3, 0), textcoords="offset points")
        right.set_yticks(list(y), names, **st)
        right.set_xlim(0, max(max(p["claimed"], p["resolved"]) for p in people) * 1.25 + 1)
        right.set_ylim(len(people) - 0.4, -1.2)  # top to bottom, room above for the legend
        right.xaxis.set_major_locator(MaxNLocator(integer=True))
        right.legend(prop={"family": st["family"], "size": 8}, ncols=2, loc="upper center")
    else:
        right.text(0.5, 0.5, t("reports.chart.no_people"), ha="center", va="center", transform=right.transAxes,
                   **st)
        right.set_xticks([])
        right.set_yticks([])
    right.set_title(t("reports.chart.per_person"), **st)
    return _save(fig, path)


def heat_map_chart(path: Path, title: str, grids: list[tuple[str, dict[str, dict[str, float | None]]]],
                   row_names: dict[str, str] | None = None, *, font: Path | None | bool = True) -> Path:
    """Median minutes per stage, one panel per grouping (team, category); empty cells grey."""
    rows_total = sum(max(1, len(g)) for _, g in grids)
    fig, st = _figure(9.5, 1.6 + 0.55 * rows_total + 0.6 * len(grids), font)
    fig.suptitle(title, fontsize=14, **st)
    axes = fig.subplots(len(grids), 1, squeeze=False,
                        height_ratios=[max(1, len(g)) + 1 for _, g in grids])[:, 0]
    stage_labels = [t(f"reports.stage.{s}") for s in STAGES]
    worst = max((v for _, g in grids for row in g.values() for v in row.values() if v), default=1) / 60
    for ax, (label, grid) in zip(axes, grids):
        keys = list(grid) or ["—"]
        data = [[(grid.get(k, {}).get(s) or math.nan) / 60 if grid.get(k, {}).get(s) is not None else math.nan
                 for s in STAGES] for k in keys]
        ax.imshow(data, cmap="OrRd", vmin=0, vmax=max(worst, 1), aspect="auto")
        for i, row in enumerate(data):
            for j, v in enumerate(row):
                text = "—" if math.isnan(v) else (f"{v:.0f}" if v >= 10 else f"{v:.1f}")
                ax.text(j, i, text, ha="center", va="center", fontsize=9,
                        color="white" if not math.isnan(v) and v > worst * 0.6 else "black", **st)
        ax.set_xticks(range(len(STAGES)), stage_labels, **st)
        ax.set_yticks(range(len(keys)), [(row_names or {}).get(k, k) for k in keys], **st)
        ax.set_title(label, loc="left", fontsize=11, **st)
        ax.set_facecolor("#eeeeee")
    return _save(fig, path)


def text_sample(path: Path, text: str, *, font: Path | None | bool = True) -> Path:
    """One line of text alone, to check how glyphs render (tests, font checks)."""
    fig, st = _figure(2.0, 0.8, font)
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=28, **st)
    return _save(fig, path)
