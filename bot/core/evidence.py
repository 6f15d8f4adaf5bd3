"""Evidence before 完工: on-site photos taken after 开始维修, and a completion note.

A photo's time is the one its camera wrote (EXIF DateTimeOriginal, read with
Pillow) when the file is here and has one, else the time the bot received it;
the audit event of the photo says which. Only photos taken at or after the
ticket's first 开始维修 of the current claim count toward the minimum, so
pictures from the gallery taken before the work started prove nothing.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.config import Config
from storage.models import Ticket, TicketEvent

# EXIF tags (Exif sub-IFD): DateTimeOriginal, DateTimeDigitized, OffsetTimeOriginal; main IFD: DateTime.
_DATETIME_ORIGINAL, _DATETIME_DIGITIZED, _OFFSET_ORIGINAL, _DATETIME = 36867, 36868, 36881, 306
_EXIF_IFD = 0x8769
# A camera clock ahead of the server by more than this is not believed.
_CLOCK_SKEW = timedelta(minutes=5)
# Thumbnails a card shows at most (the newest ones).
MAX_THUMBNAILS = 6


def required_photos(config: Config, ticket: Ticket) -> int:
    """The minimum for this ticket: its category's number, else its priority's, else the default."""
    tc = config.tickets
    if ticket.category in tc.min_photos_by_category:
        return tc.min_photos_by_category[ticket.category]
    return tc.min_photos_by_priority.get(ticket.priority, tc.min_photos)  # type: ignore[arg-type]


def _exif_time(path: str, tz: ZoneInfo) -> datetime | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            exif = im.getexif()
            sub = exif.get_ifd(_EXIF_IFD)
            raw = sub.get(_DATETIME_ORIGINAL) or sub.get(_DATETIME_DIGITIZED) or exif.get(_DATETIME)
            offset = sub.get(_OFFSET_ORIGINAL)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    if not isinstance(raw, str):
        return None
    try:
        naive = datetime.strptime(raw.strip().rstrip("\x00"), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    if isinstance(offset, str):
        try:
            return datetime.strptime(f"{naive:%Y-%m-%d %H:%M:%S}{offset.strip()}", "%Y-%m-%d %H:%M:%S%z")
        except ValueError:
            pass
    # No offset written: the camera's local time, taken to be the tickets' time zone.
    return naive.replace(tzinfo=tz)


async def photo_time(media_ref: str, received: datetime, tz: ZoneInfo) -> tuple[datetime, str]:
    """When the photo was taken and how we know: ("exif" | "received")."""
    if os.path.isfile(media_ref):
        taken = await asyncio.to_thread(_exif_time, media_ref, tz)
        if taken is not None and taken <= received + _CLOCK_SKEW:
            return taken, "exif"
    return received, "received"


@dataclass(frozen=True)
class Photo:
    media_ref: str
    taken_at: datetime
    time_source: str
    counts: bool  # taken after 开始维修 of the current claim


async def photos(s: AsyncSession, ticket: Ticket) -> list[Photo]:
    """The ticket's photos, oldest first, each marked whether it counts toward 完工."""
    rows = (await s.exec(select(TicketEvent.action, TicketEvent.at, TicketEvent.detail)
                         .where(TicketEvent.ticket_id == ticket.id,
                                TicketEvent.action.in_(("claim", "reopen", "start_repair", "photo")))
                         .order_by(TicketEvent.id))).all()
    started: datetime | None = None
    out: list[Photo] = []
    for action, at, detail in rows:
        if action in ("claim", "reopen"):
            started = None  # a new owner's work starts afresh
        elif action == "start_repair" and started is None:
            started = at
    for action, at, detail in rows:
        if action != "photo":
            continue
        taken = _parse(detail.get("taken_at")) or at
        out.append(Photo(detail.get("media_ref", ""), taken, detail.get("time_source", "received"),
                         started is not None and taken >= started))
    return out


async def repair_started_at(s: AsyncSession, ticket: Ticket) -> datetime | None:
    """The first 开始维修 of the current claim (None: not started)."""
    rows = (await s.exec(select(TicketEvent.action, TicketEvent.at)
                         .where(TicketEvent.ticket_id == ticket.id,
                                TicketEvent.action.in_(("claim", "reopen", "start_repair")))
                         .order_by(TicketEvent.id))).all()
    started = None
    for action, at in rows:
        if action in ("claim", "reopen"):
            started = None
        elif started is None:
            started = at
    return started


def _parse(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class Shortfall:
    """What 完工 still lacks; None fields are satisfied."""

    photos_needed: int = 0
    photos_have: int = 0
    note_missing: bool = False

    @property
    def ok(self) -> bool:
        return self.photos_needed <= self.photos_have and not self.note_missing


async def check(config: Config, s: AsyncSession, ticket: Ticket, note: str | None) -> Shortfall:
    need = required_photos(config, ticket)
    have = sum(p.counts for p in await photos(s, ticket)) if need else 0
    return Shortfall(need, have, config.tickets.require_resolution_note and not (note or "").strip())
