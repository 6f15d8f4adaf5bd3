"""The service report as a one-page A4 PDF with Chinese text, for finance.

Drawn with fpdf2, which embeds a subset of the font, so any viewer shows the
Chinese text without fonts of its own. The font is the one the managers'
charts use (Noto Sans CJK SC, `reports.fonts`), or the TTF/OTF named by
`[api] report_font`. Building one takes about a second (most of it
reading the font), so it runs in a worker thread.
"""
from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from aiohttp import web
from fpdf import FPDF

from api.operations import API
from api.report import ServiceReport, service_report
from api.spec import Context, Later
from api.tickets import ticket_by_number
from bot.texts import t
from reports.fonts import cjk_font_file

MAX_LOG_ROWS = 12


FOOTER_Y = -18.0  # the footer's distance from the bottom edge
LINE = 5.5
ROW = 6.0


class _Page:
    def __init__(self, font: Path, tz: ZoneInfo):
        self.tz = tz
        self.pdf = FPDF(orientation="P", unit="mm", format="A4")
        self.pdf.set_auto_page_break(False)  # one page: content is clipped to fit, never spills over
        self.pdf.set_margins(15, 15, 15)
        self.pdf.add_font("cjk", "", str(font))
        self.pdf.add_page()

    def when(self, at: datetime | None) -> str:
        return at.astimezone(self.tz).strftime("%Y-%m-%d %H:%M") if at else t("report.none")

    def fit(self, text: str | None, width: float, lines: int = 1) -> str:
        """`text` on one line, shortened with … to fit `lines` lines of `width` mm
        (the current font; a little slack for where wrapping breaks)."""
        text = " ".join((text or "").split())
        budget = (width - 2 * self.pdf.c_margin) * lines * (0.92 if lines > 1 else 1.0)
        if self.pdf.get_string_width(text) <= budget:
            return text
        lo, hi = 0, len(text)
        while lo < hi:  # the longest prefix that fits with the ellipsis
            mid = (lo + hi + 1) // 2
            if self.pdf.get_string_width(text[:mid] + "…") <= budget:
                lo = mid
            else:
                hi = mid - 1
        return text[:lo] + "…"

    @property
    def width(self) -> float:
        return self.pdf.w - self.pdf.l_margin - self.pdf.r_margin

    def heading(self, text: str) -> None:
        pdf = self.pdf
        pdf.ln(3)
        pdf.set_font("cjk", size=12)
        pdf.set_text_color(21, 101, 192)
        pdf.cell(0, 7, text, new_x="LMARGIN", new_y="NEXT")
        pdf.set_draw_color(21, 101, 192)
        pdf.line(pdf.l_margin, pdf.get_y(), pdf.w - pdf.r_margin, pdf.get_y())
        pdf.set_text_color(0, 0, 0)
        pdf.ln(1.5)

    def pairs(self, rows: list[tuple[str, str, str, str]]) -> None:
        """Two label/value pairs per line."""
        pdf = self.pdf
        pdf.set_font("cjk", size=9.5)
        half = (pdf.w - pdf.l_margin - pdf.r_margin) / 2
        for l1, v1, l2, v2 in rows:
            for label, value in ((l1, v1), (l2, v2)):
                pdf.set_text_color(110, 110, 110)
                pdf.cell(24, 6.2, label)
                pdf.set_text_color(0, 0, 0)
                pdf.cell(half - 24, 6.2, self.fit(value, half - 24))
            pdf.ln(6.2)

    def paragraph(self, text: str, lines: int = 3) -> None:
        """At most `lines` lines; longer text ends with …."""
        self.pdf.set_font("cjk", size=9.5)
        self.pdf.multi_cell(0, LINE, self.fit(text, self.width, lines), new_x="LMARGIN", new_y="NEXT")


def render_pdf(report: ServiceReport, *, font: Path | None = None, tz: str = "Asia/Shanghai",
               now: datetime | None = None) -> bytes:
    p = _Page(font or cjk_font_file(), ZoneInfo(tz))
    pdf, none = p.pdf, t("report.none")
    pdf.set_title(f"{t('report.title')} {report.number}")
    pdf.set_creator("RelayDesk")
    pdf.set_font("cjk", size=18)
    pdf.cell(0, 11, t("report.title"), align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("cjk", size=10)
    pdf.set_text_color(90, 90, 90)
    pdf.cell(0, 6, f"{t('report.number')}：{report.number}", align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)

    minutes = lambda n: t("report.minutes", minutes=n) if n is not None else none  # noqa: E731
    p.heading(t("report.summary"))
    p.paragraph(report.summary, 2)
    p.pairs([
        (t("report.category"), report.category_name, t("report.priority"), t(f"priority.{report.priority}")),
        (t("report.location"), report.location or none, t("report.serial"), report.serial or none),
        (t("report.reporter"), report.reporter.name, t("report.engineer"), report.engineer.name if report.engineer else none),
        (t("report.created"), p.when(report.created_at), t("report.claimed"), p.when(report.claimed_at)),
        (t("report.resolved"), p.when(report.resolved_at), t("report.state"), t(f"state.{report.state}")),
        (t("report.response"), minutes(report.response_minutes), t("report.repair"), minutes(report.repair_minutes)),
        (t("report.rating"), t("report.stars", stars=report.rating) if report.rating else t("report.not_rated"),
         t("report.closed"), p.when(report.closed_at)),
    ])
    p.heading(t("report.resolution"))
    p.paragraph(report.resolution or none, 3)
    p.heading(t("report.parts"))
    p.paragraph("；".join(report.parts) if report.parts else t("report.no_parts"), 2)

    p.heading(t("report.log"))
    widths = (32, 22, 24, p.width - 78)
    pdf.set_font("cjk", size=9)
    pdf.set_fill_color(235, 240, 248)
    for w, label in zip(widths, (t("report.log_time"), t("report.log_action"), t("report.log_by"), t("report.log_text"))):
        pdf.cell(w, 6, label, border=1, fill=True)
    pdf.ln(ROW)
    # Rows that fit above the photos section (heading + two lines) and the footer.
    room = pdf.h + FOOTER_Y - pdf.get_y() - (12 + 2 * LINE) - ROW
    rows = max(1, min(MAX_LOG_ROWS, int(room // ROW)))
    items = report.items[-rows:]
    for item in items:
        for w, value in zip(widths, (p.when(item.at), p.fit(item.action_name, widths[1]), p.fit(item.by, widths[2]),
                                     p.fit(item.text, widths[3]))):
            pdf.cell(w, ROW, value, border=1)
        pdf.ln(ROW)
    if len(report.items) > len(items):
        pdf.set_text_color(110, 110, 110)
        pdf.cell(0, 6, t("report.more", count=len(report.items) - len(items)), new_x="LMARGIN", new_y="NEXT")
        pdf.set_text_color(0, 0, 0)

    p.heading(t("report.photos"))
    p.paragraph("、".join(report.photos) if report.photos else t("report.no_photos"), 2)

    pdf.set_y(FOOTER_Y)
    pdf.set_font("cjk", size=8)
    pdf.set_text_color(130, 130, 130)
    stamp = (now or datetime.now(ZoneInfo(tz))).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")
    pdf.cell(0, 5, t("report.footer", time=stamp), align="C")
    return bytes(pdf.output())


@API.route("GET", "/tickets/{number}/report.pdf", summary="The service report as a one-page PDF",
           scope="tickets:read", tag="reports", responses={200: None}, problems=("not-found",),
           produces="application/pdf")
async def ticket_report_pdf(ctx: Context) -> Later:
    """A4, Chinese, for finance: the same content as the JSON report."""
    ticket = await ticket_by_number(ctx, ctx.path["number"], lock=False)
    report = await service_report(ctx.s, ticket)
    cfg = ctx.runtime.config

    async def draw() -> web.Response:
        body = await asyncio.to_thread(render_pdf, report, font=cfg.api.report_font, tz=cfg.tickets.timezone)
        return web.Response(body=body, content_type="application/pdf",
                            headers={"Content-Disposition": f'inline; filename="{report.number}.pdf"'})

    return Later(draw)
