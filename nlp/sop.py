"""SOP / knowledge cards: short Chinese procedures for categories and error codes.

The cards live in a TOML data file (nlp/data/sop.toml by default):

    [categories.water_leak]          # one card per category id
    title = "..."
    steps = ["...", "...", "..."]    # 3 to 6 steps

    [codes.vfd_overcurrent]          # one card for a family of error codes
    codes = ["E02", "Err02", "OC*"]  # "OC*" matches OC, OC1, OC2 ...
    categories = ["inverter_alarm"]  # optional: only for reports of these categories
    title = "..."
    steps = ["...", "...", "..."]

A lookup prefers a matching error-code card over the category card.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from .taxonomy import TaxonomyError

__all__ = ["SopCard", "SopLibrary", "SopError", "default_sop_path"]

MIN_STEPS = 3
MAX_STEPS = 6
_CODE_ENTRY_RE = re.compile(r"^([A-Z]+)(\d*)(\*?)$")
_CODE_VALUE_RE = re.compile(r"^([A-Z]+)(\d*)$")


class SopError(TaxonomyError):
    """The SOP data file is malformed (names the file, the entry and the problem)."""


@dataclass(frozen=True)
class SopCard:
    title: str
    steps: tuple[str, ...]
    key: str


@dataclass(frozen=True)
class _CodeRule:
    letters: str
    number: int | None
    any_number: bool

    def matches(self, letters: str, number: int | None) -> bool:
        if letters != self.letters:
            return False
        return self.any_number or number == self.number


def _split_code(code: str) -> tuple[str, int | None] | None:
    compact = re.sub(r"[\s.\-_]", "", code).upper()
    m = _CODE_VALUE_RE.match(compact)
    if not m:
        return None
    return m.group(1), int(m.group(2)) if m.group(2) else None


def default_sop_path() -> Path:
    return Path(str(resources.files("nlp") / "data" / "sop.toml"))


class SopLibrary:
    _default: "SopLibrary | None" = None

    def __init__(self, category_cards: dict[str, SopCard],
                 code_cards: list[tuple[tuple[_CodeRule, ...], frozenset[str] | None, SopCard]]) -> None:
        self._category_cards = dict(category_cards)
        self._code_cards = list(code_cards)

    @classmethod
    def default(cls) -> "SopLibrary":
        if cls._default is None:
            cls._default = cls.from_file(default_sop_path())
        return cls._default

    @classmethod
    def from_file(cls, path: str | os.PathLike[str],
                  categories: Iterable[str] | None = None) -> "SopLibrary":
        """Load a SOP file; with ``categories`` the category ids it uses are checked too."""
        return _load(Path(path), frozenset(categories) if categories is not None else None)

    @property
    def cards(self) -> list[SopCard]:
        return list(self._category_cards.values()) + [card for _, _, card in self._code_cards]

    def for_category(self, category: str) -> SopCard | None:
        return self._category_cards.get(category)

    def for_code(self, code: str, category: str | None = None) -> SopCard | None:
        split = _split_code(code)
        if split is None:
            return None
        letters, number = split
        for rules, cats, card in self._code_cards:
            if cats is not None and category is not None and category not in cats:
                continue
            if any(rule.matches(letters, number) for rule in rules):
                return card
        return None

    def lookup(self, classification: Any) -> SopCard | None:
        """The best card for a classified report: its error code's card, else its category's, else None."""
        category = getattr(classification, "category", None)
        code = getattr(classification, "error_code", None)
        if code:
            card = self.for_code(code, category)
            if card is not None:
                return card
        if category:
            return self._category_cards.get(category)
        return None


# --------------------------------------------------------------------------


def _load(path: Path, known: frozenset[str] | None) -> SopLibrary:
    def fail(entry: str, problem: str) -> SopError:
        return SopError(path, entry, problem)

    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise fail("", f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise fail("", f"is not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise fail("", f"not valid TOML: {exc}") from None

    for key in raw:
        if key not in ("categories", "codes"):
            raise fail(key, "unknown key (expected [categories.<id>] or [codes.<name>] tables)")

    def card(entry: str, body: Any, key: str, extra: tuple[str, ...]) -> SopCard:
        if not isinstance(body, dict):
            raise fail(entry, "must be a table")
        allowed = ("title", "steps") + extra
        for k in body:
            if k not in allowed:
                raise fail(f"{entry}.{k}", f"unknown key; allowed: {', '.join(allowed)}")
        title = body.get("title")
        if not isinstance(title, str) or not title.strip():
            raise fail(f"{entry}.title", "must be a non-empty string")
        steps = body.get("steps")
        if not isinstance(steps, list):
            raise fail(f"{entry}.steps", "must be a list of strings")
        if not MIN_STEPS <= len(steps) <= MAX_STEPS:
            raise fail(f"{entry}.steps", f"must have {MIN_STEPS} to {MAX_STEPS} steps, has {len(steps)}")
        for i, step in enumerate(steps):
            if not isinstance(step, str) or not step.strip():
                raise fail(f"{entry}.steps[{i}]", "must be a non-empty string")
        return SopCard(title=title.strip(), steps=tuple(s.strip() for s in steps), key=key)

    categories = raw.get("categories", {})
    if not isinstance(categories, dict):
        raise fail("categories", "must be a table of [categories.<id>] cards")
    category_cards: dict[str, SopCard] = {}
    for cat_id, body in categories.items():
        entry = f"categories.{cat_id}"
        if known is not None and cat_id not in known:
            raise fail(entry, f"unknown category id {cat_id!r}")
        category_cards[cat_id] = card(entry, body, f"category:{cat_id}", ())

    codes = raw.get("codes", {})
    if not isinstance(codes, dict):
        raise fail("codes", "must be a table of [codes.<name>] cards")
    code_cards = []
    for name, body in codes.items():
        entry = f"codes.{name}"
        sop = card(entry, body, f"code:{name}", ("codes", "categories"))
        code_list = body.get("codes")
        if not isinstance(code_list, list) or not code_list:
            raise fail(f"{entry}.codes", "must list at least one error code")
        rules = []
        for i, code in enumerate(code_list):
            where = f"{entry}.codes[{i}]"
            if not isinstance(code, str):
                raise fail(where, "must be a string")
            compact = re.sub(r"[\s.\-_]", "", code).upper()
            m = _CODE_ENTRY_RE.match(compact)
            if not m:
                raise fail(where, f"{code!r} is not an error code (letters, digits, optional trailing *)")
            rules.append(_CodeRule(m.group(1), int(m.group(2)) if m.group(2) else None, bool(m.group(3))))
        cats = body.get("categories")
        cat_set = None
        if cats is not None:
            if not isinstance(cats, list) or not all(isinstance(c, str) and c for c in cats):
                raise fail(f"{entry}.categories", "must be a list of category ids")
            for i, c in enumerate(cats):
                if known is not None and c not in known:
                    raise fail(f"{entry}.categories[{i}]", f"unknown category id {c!r}")
            cat_set = frozenset(cats)
        code_cards.append((tuple(rules), cat_set, sop))
    return SopLibrary(category_cards, code_cards)
