"""Errors as `application/problem+json` (RFC 9457), each with a stable `type`.

A client branches on `type` (and, for refusals, `reason`); `title` is a short
English summary, `detail` says what happened to this request — for refusals
it is the same Chinese sentence a chat user would read.
"""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from bot.core.service import Refused

PROBLEM_JSON = "application/problem+json"
PREFIX = "urn:relaydesk:problem:"

# slug -> (HTTP status, title). The slugs are part of the API: never rename one.
PROBLEMS: dict[str, tuple[int, str]] = {
    "unauthorized": (401, "Missing or unknown API token"),
    "token-revoked": (401, "The API token was revoked"),
    "insufficient-scope": (403, "The API token lacks the scope this operation needs"),
    "rate-limited": (429, "Too many requests for this API token"),
    "malformed-json": (400, "The request body is not valid JSON"),
    "unsupported-media-type": (415, "Send the request body as application/json"),
    "body-too-large": (413, "The request body is too large"),
    "validation-failed": (422, "The request does not match the schema"),
    "idempotency-key-missing": (400, "This operation needs an Idempotency-Key header"),
    "idempotency-key-reused": (422, "The Idempotency-Key was used with a different request"),
    "not-found": (404, "No such resource"),
    "method-not-allowed": (405, "The resource does not support this method"),
    "bad-cursor": (400, "The paging cursor is not valid"),
    "external-id-taken": (409, "The external id already names another ticket"),
    "unknown-person": (422, "No such person"),
    "unknown-system": (422, "The system is not configured under [integrations]"),
    "unsafe-url": (422, "The webhook URL may not be used"),
    "forbidden": (403, "The rules do not allow this person to do this"),
    "refused": (409, "The ticket's state does not allow this"),
    "frozen": (409, "The ticket is frozen: its systems contradict each other"),
}

# Refusals that are about who acts, not about the ticket's state.
_PERMISSION_REFUSALS = frozenset({
    "customer_cannot_claim", "transferred_to_other", "owner_only", "staff_only", "lead_only",
    "not_your_ticket", "reporter_only_rate", "reporter_or_lead", "customer_command", "unfreeze_lead_only",
})
_NOT_FOUND_REFUSALS = frozenset({"bad_number", "no_such_ticket"})


class Problem(Exception):
    """Raise inside an API handler; answered as problem+json."""

    def __init__(self, slug: str, detail: str | None = None, *, headers: dict[str, str] | None = None,
                 **extensions: Any):
        status, title = PROBLEMS[slug]
        super().__init__(detail or title)
        self.slug, self.status, self.title = slug, status, title
        self.detail = detail or title
        self.headers = headers or {}
        self.extensions = extensions

    def body(self, instance: str | None = None) -> dict:
        body = {"type": PREFIX + self.slug, "title": self.title, "status": self.status, "detail": self.detail}
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return body

    def response(self, instance: str | None = None) -> web.Response:
        return web.Response(status=self.status, text=json.dumps(self.body(instance), ensure_ascii=False),
                            content_type=PROBLEM_JSON, headers=self.headers)


def from_refusal(r: Refused) -> Problem:
    """A service refusal as a problem: the chat's own sentence in `detail`, its key in `reason`."""
    if r.key in _NOT_FOUND_REFUSALS:
        return Problem("not-found", r.text, reason=r.key)
    if r.key == "frozen":
        return Problem("frozen", r.text, reason=r.key)
    return Problem("forbidden" if r.key in _PERMISSION_REFUSALS else "refused", r.text, reason=r.key)
