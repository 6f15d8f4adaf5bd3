"""What the Feishu channel keeps between callbacks: the card clicks being answered.

Feishu reverts a card update made before the click's callback was answered,
and the answer already carries the new card. So the outbox's PATCH of a card
waits (CLICK_ANSWER_WAIT at most) while a click on it is being answered, and
is skipped when the answer showed exactly the same card. Both are per process:
the callback and the outbox worker that follows it run in the same one.
"""
from __future__ import annotations

import asyncio
import time

from bot.channels.shared.bounded import Bounded

# How long a card returned from a click counts as "what everybody sees".
INLINE_CARD_TTL = 120.0
# How long the outbox waits for a click's answer to be written before PATCHing that card.
CLICK_ANSWER_WAIT = 5.0


class ClickAnswers:
    """Per card (message_id): the clicks being answered, and the card the last answer showed."""

    def __init__(self):
        # message_id -> one Event per click on that card being answered, set once the answer is written.
        self._answering: dict[str, set[asyncio.Event]] = {}
        # message_id -> (monotonic time, content) of the card a click's answer showed.
        self._inline: Bounded = Bounded(10_000)

    def begin(self, message_id: str | None) -> asyncio.Event:
        """A click on the card is being answered; set the returned event (through `end`) once written."""
        answered = asyncio.Event()
        if message_id:
            self._answering.setdefault(message_id, set()).add(answered)
        return answered

    def showed(self, message_id: str, content: str) -> None:
        """The click's answer replaced the card with `content`."""
        self._inline[message_id] = (time.monotonic(), content)

    def end(self, message_id: str | None, answered: asyncio.Event) -> None:
        answered.set()
        pending = self._answering.get(message_id) if message_id else None
        if pending is not None:
            pending.discard(answered)
            if not pending:
                del self._answering[message_id]

    async def already_shown(self, message_id: str, content: str) -> bool:
        """Wait for clicks on the card being answered; whether an answer already shows `content`."""
        pending = list(self._answering.get(message_id, ()))
        if pending:  # a click on this card is being answered: update only after the answer
            waits = [asyncio.ensure_future(e.wait()) for e in pending]
            _done, late = await asyncio.wait(waits, timeout=CLICK_ANSWER_WAIT)
            for w in late:
                w.cancel()
        shown = self._inline.pop(message_id, None)
        return bool(shown and shown[1] == content and time.monotonic() - shown[0] < INLINE_CARD_TTL)
