"""Photos of the work from another system: the evidence 完工 asks for.

A picture is checked to be a JPEG, PNG or WebP image, kept under the API's
photo folder named by its content, and attached with the service's own photo
command, exactly as a picture sent in chat: the same attachment row, the same
audit event (with via=api and the token), the same EXIF-or-received time, and
the same rule (bot/core/evidence.py) decides whether it counts toward 完工.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import os
from pathlib import Path

from api import models as m
from api.operations import API
from api.problems import Problem
from api.spec import Context, Reply
from api.tickets import ACTION_PROBLEMS, api_actor, photo_id, ticket_by_number, ticket_out
from bot.core import evidence
from storage.media import store_content
from storage.models import Person

# Pillow's format name -> the file's suffix. Formats a phone or a browser shows everywhere.
IMAGE_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}


def photo_dir(config) -> Path:
    """Where API pictures are kept: [api] photo_dir, else <data dir>/api-media."""
    if config.api.photo_dir is not None:
        return Path(config.api.photo_dir)
    return Path(os.environ.get("RELAYDESK_DATA_DIR") or "data") / "api-media"


def _decode(text: str, limit: int) -> bytes:
    # Four base64 characters carry three bytes: refuse an oversized picture before decoding it.
    if len(text) > (limit + 2) // 3 * 4 + 4:
        raise Problem("body-too-large", f"the picture may be at most {limit} bytes", max_bytes=limit)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Problem("validation-failed", "content_base64: not base64 (standard alphabet, padded)") from None
    if len(data) > limit:
        raise Problem("body-too-large", f"the picture may be at most {limit} bytes", max_bytes=limit)
    return data


def _suffix(data: bytes) -> str:
    """The image's file suffix; not-an-image unless Pillow reads it as one of IMAGE_FORMATS."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.verify()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise Problem("not-an-image", "content_base64 is not a readable image") from None
    if fmt not in IMAGE_FORMATS:
        raise Problem("not-an-image", f"a {fmt} image; send JPEG, PNG or WebP")
    return IMAGE_FORMATS[fmt]


def _store(folder: Path, data: bytes, suffix: str) -> Path:
    return store_content(folder, data, suffix).resolve()


def _photo_body_limit(api) -> int:
    return (api.max_photo_bytes + 2) // 3 * 4 + 4096  # the base64 picture plus the JSON around it


@API.route("POST", "/tickets/{number}/photos", summary="Attach a photo of the work", scope="tickets:write",
           tag="actions", body=m.PhotoIn, responses={200: m.PhotoResult},
           problems=ACTION_PROBLEMS + ("not-an-image",), idempotency="optional", body_limit=_photo_body_limit)
async def attach_photo(ctx: Context, body: m.PhotoIn) -> Reply:
    """Recorded as a photo sent in chat by `actor`. Only photos taken after 开始维修 of the current
    claim count toward 完工 (EXIF time when the picture has one, else the time received); the answer
    says whether this one counts and how many 完工 needs. The same picture twice is attached once."""
    s, rt = ctx.s, ctx.runtime
    data = _decode(body.content_base64, rt.config.api.max_photo_bytes)
    suffix = await asyncio.to_thread(_suffix, data)
    ticket = await ticket_by_number(ctx, ctx.path["number"])
    person = await s.get(Person, body.actor)
    if person is None or not person.active:
        raise Problem("unknown-person", f"no active person with id {body.actor!r}")
    path = await asyncio.to_thread(_store, photo_dir(rt.config), data, suffix)
    ref = str(path)
    change = await rt.bot._apply(s, await rt.service.photo(s, api_actor(ctx, person), ticket, ref))
    await s.flush()
    photos = await evidence.photos(s, ticket)
    ctx.wrote = change.changed
    return Reply(200, m.PhotoResult(
        changed=change.changed, photo=photo_id(ref), counts=any(p.counts for p in photos if p.media_ref == ref),
        photos_required=evidence.required_photos(rt.config, ticket), photos_counted=sum(p.counts for p in photos),
        ticket=await ticket_out(s, ticket)))
