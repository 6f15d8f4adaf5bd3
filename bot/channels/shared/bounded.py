"""A small mapping that forgets its oldest entries: for per-app caches that must not grow without end."""
from __future__ import annotations

from collections import OrderedDict


class Bounded(OrderedDict):
    """A small LRU mapping: the oldest entries go once `limit` is reached."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def __setitem__(self, key, value) -> None:
        if key in self:
            self.move_to_end(key)
        super().__setitem__(key, value)
        while len(self) > self.limit:
            self.popitem(last=False)
