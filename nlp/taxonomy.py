"""Loading and validating the taxonomy data file (nlp/data/taxonomy.toml).

The file is the single place where the classifier's domain knowledge lives:
categories and their words, priority rules, negations, typo and English
tables, entity vocabulary. Everything is checked on load; a problem raises
:class:`TaxonomyError` naming the file, the entry and the problem.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .normalize import basic_form

__all__ = [
    "TaxonomyError",
    "Taxonomy",
    "Category",
    "Settings",
    "PriorityWords",
    "Grammar",
    "EntityWords",
    "LocationWords",
    "load_taxonomy",
    "default_taxonomy_path",
    "PRIORITIES",
    "KINDS",
]

PRIORITIES = ("P0", "P1", "P2")
KINDS = ("fault", "request", "fallback")
_ID_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class TaxonomyError(ValueError):
    """A taxonomy (or SOP) data file is malformed: names the file, the entry and the problem."""

    def __init__(self, path: str | os.PathLike[str], entry: str, problem: str) -> None:
        self.path = str(path)
        self.entry = entry
        self.problem = problem
        where = f"{self.path}: {entry}" if entry else self.path
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class Settings:
    fallback: str
    precedence: tuple[str, ...]
    pattern_gap: int
    hint_gap: int
    negation_window: int
    max_chars: int
    code_category: str | None = None


@dataclass(frozen=True)
class Category:
    id: str
    name: str
    kind: str
    priority: str
    urgent_priority: str | None
    safety: bool
    keywords: tuple[str, ...]
    weak_keywords: tuple[str, ...]
    hints: tuple[str, ...]
    hint_predicates: tuple[str, ...]
    measures: tuple[str, ...] = ()
    # False: this category's unit stopping (one lift, one air-conditioner) is not a business stoppage
    stoppage: bool = True
    # categories whose symptoms, said of this category's hints, belong here (电梯 + 咯噔响 -> elevator)
    absorbs: tuple[str, ...] = ()
    # words that raise this category to urgent_priority (灯全灭, 应急灯), as [priority].urgent do
    urgent_words: tuple[str, ...] = ()
    # words that make a fault of this category minor: P1 -> P2 (卡纸)
    minor_words: tuple[str, ...] = ()


@dataclass(frozen=True)
class Grammar:
    negations: tuple[str, ...]
    negation_stops: tuple[str, ...]
    hint_stops: tuple[str, ...]
    fault_predicates: tuple[str, ...]
    particles: tuple[str, ...] = ()
    resolved: tuple[str, ...] = ()
    greetings: tuple[str, ...] = ()
    complements: tuple[str, ...] = ()


@dataclass(frozen=True)
class PriorityWords:
    safety: tuple[str, ...]
    impact: tuple[str, ...]
    impact_scopes: tuple[str, ...]
    impact_stops: tuple[str, ...]
    stoppage: tuple[str, ...]
    degraded: tuple[str, ...]
    neutral: tuple[str, ...]
    can_wait: tuple[str, ...]
    urgent: tuple[str, ...]
    fault_words: tuple[str, ...]
    # "no backup" (就这一台, 没有备用): a stoppage for every category, even those with stoppage = false
    no_backup: tuple[str, ...] = ()


@dataclass(frozen=True)
class LocationWords:
    units: tuple[str, ...]
    rooms: tuple[str, ...]
    floors: tuple[str, ...]
    named_sites: tuple[str, ...]
    sites: tuple[str, ...]
    vague: tuple[str, ...]
    device_heads: tuple[str, ...]
    determiners: tuple[str, ...] = ()
    # named rooms that identify a place by themselves (配电房, 会议室, B1停车场's 停车场)
    places: tuple[str, ...] = ()


@dataclass(frozen=True)
class EntityWords:
    serial_labels: tuple[str, ...]
    serial_patterns: tuple[str, ...]
    code_prefixes: tuple[str, ...]
    code_words: tuple[str, ...]
    code_labels: tuple[str, ...]
    location: LocationWords


@dataclass(frozen=True)
class Taxonomy:
    path: str
    settings: Settings
    typos: tuple[tuple[str, str], ...]
    english: tuple[tuple[str, str], ...]
    grammar: Grammar
    priority: PriorityWords
    entities: EntityWords
    categories: dict[str, Category]

    @property
    def fallback(self) -> Category:
        return self.categories[self.settings.fallback]

    def all_words(self) -> set[str]:
        """Every literal word and pattern part, for the segmenter's user dictionary."""
        words: set[str] = set()
        lists: list[tuple[str, ...]] = [
            self.grammar.negations,
            self.grammar.resolved,
            self.grammar.greetings,
            self.grammar.negation_stops,
            self.grammar.hint_stops,
            self.grammar.fault_predicates,
        ]
        p = self.priority
        lists += [p.safety, p.impact, p.impact_scopes, p.impact_stops, p.stoppage,
                  p.degraded, p.neutral, p.can_wait, p.urgent, p.fault_words, p.no_backup]
        for cat in self.categories.values():
            lists += [cat.keywords, cat.weak_keywords, cat.hints, cat.hint_predicates, cat.measures,
                      cat.urgent_words, cat.minor_words]
        for seq in lists:
            for word in seq:
                for part in word.split("*"):
                    if len(part) > 1:
                        words.add(part)
        return words


def default_taxonomy_path() -> Path:
    return Path(str(resources.files("nlp") / "data" / "taxonomy.toml"))


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


class _Checker:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, entry: str, problem: str) -> TaxonomyError:
        return TaxonomyError(self.path, entry, problem)

    def table(self, value: Any, entry: str, required: tuple[str, ...],
              optional: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(entry, f"must be a table, got {_type_name(value)}")
        allowed = required + optional
        for key in value:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise self.fail(_join(entry, key), f"unknown key{suggestion}")
        for key in required:
            if key not in value:
                raise self.fail(_join(entry, key), "missing")
        return value

    def string(self, value: Any, entry: str) -> str:
        if not isinstance(value, str):
            raise self.fail(entry, f"must be a string, got {_type_name(value)}")
        if not value.strip():
            raise self.fail(entry, "must not be empty")
        return value.strip()

    def boolean(self, value: Any, entry: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(entry, f"must be true or false, got {_type_name(value)}")
        return value

    def integer(self, value: Any, entry: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(entry, f"must be an integer, got {_type_name(value)}")
        if not low <= value <= high:
            raise self.fail(entry, f"must be between {low} and {high}, got {value}")
        return value

    def priority(self, value: Any, entry: str) -> str:
        text = self.string(value, entry)
        if text not in PRIORITIES:
            raise self.fail(entry, f"unknown priority {text!r}; use one of {', '.join(PRIORITIES)}")
        return text

    def words(self, value: Any, entry: str, *, required: bool = False,
              patterns: bool = True) -> tuple[str, ...]:
        """A list of words (optionally "A*B" patterns), normalised to their match form."""
        if not isinstance(value, list):
            raise self.fail(entry, f"must be a list of strings, got {_type_name(value)}")
        if required and not value:
            raise self.fail(entry, "must list at least one word")
        out: list[str] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(value):
            where = f"{entry}[{i}]"
            if not isinstance(item, str):
                raise self.fail(where, f"must be a string, got {_type_name(item)}")
            word = basic_form(item)
            if not word:
                raise self.fail(where, "must not be empty")
            if any(ch.isspace() for ch in word):
                raise self.fail(where, f"{item!r} contains whitespace; write words without spaces")
            if "*" in word:
                if not patterns:
                    raise self.fail(where, f"{item!r}: '*' patterns are not allowed here")
                parts = word.split("*")
                if any(not part for part in parts):
                    raise self.fail(where, f"{item!r}: '*' must join two non-empty parts, as in 压力*低")
            if word in seen:
                raise self.fail(where, f"duplicate of {entry}[{seen[word]}] ({item!r})")
            seen[word] = i
            out.append(word)
        return tuple(out)

    def mapping(self, value: Any, entry: str) -> tuple[tuple[str, str], ...]:
        if not isinstance(value, dict):
            raise self.fail(entry, f"must be a table of \"from\" = \"to\" strings, got {_type_name(value)}")
        out = []
        for key, target in value.items():
            where = f"{entry}.{_quote_key(key)}"
            src = basic_form(key)
            if not src:
                raise self.fail(where, "the word to replace must not be empty")
            if not isinstance(target, str):
                raise self.fail(where, f"must be a string, got {_type_name(target)}")
            dst = basic_form(target)
            if not dst:
                raise self.fail(where, "the replacement must not be empty")
            if src == dst:
                raise self.fail(where, "replaces a word with itself")
            out.append((src, dst))
        return tuple(out)

    def regexes(self, value: Any, entry: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(entry, f"must be a list of regular expressions, got {_type_name(value)}")
        out = []
        for i, item in enumerate(value):
            where = f"{entry}[{i}]"
            if not isinstance(item, str) or not item:
                raise self.fail(where, "must be a non-empty string")
            try:
                re.compile(item)
            except re.error as exc:
                raise self.fail(where, f"invalid regular expression: {exc}") from None
            out.append(item)
        return tuple(out)


def _type_name(value: Any) -> str:
    return {
        str: "a string", int: "an integer", float: "a number", bool: "a boolean",
        list: "a list", dict: "a table",
    }.get(type(value), type(value).__name__)


def _quote_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"'


def _join(entry: str, key: str) -> str:
    return f"{entry}.{_quote_key(key)}" if entry else _quote_key(key)


_DUPLICATE_TABLE_RE = re.compile(r"Cannot declare \(([^)]*)\) twice")


def _explain_toml_error(checker: _Checker, exc: tomllib.TOMLDecodeError) -> TaxonomyError:
    message = str(exc)
    match = _DUPLICATE_TABLE_RE.search(message)
    if match:
        parts = [p.strip().strip("'\"") for p in match.group(1).split(",") if p.strip()]
        entry = ".".join(_quote_key(p) for p in parts)
        where = message[message.find("(at"):] if "(at" in message else ""
        if len(parts) == 2 and parts[0] == "categories":
            return checker.fail(entry, f"duplicate category id {parts[1]!r} {where}".rstrip())
        return checker.fail(entry, f"declared twice {where}".rstrip())
    return checker.fail("", f"not valid TOML: {message}")


# --------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------


def load_taxonomy(path: str | os.PathLike[str] | None = None) -> Taxonomy:
    """Load and validate a taxonomy file (the packaged default when path is None)."""
    file_path = Path(path) if path is not None else default_taxonomy_path()
    checker = _Checker(str(file_path))
    try:
        raw_bytes = file_path.read_bytes()
    except OSError as exc:
        raise checker.fail("", f"cannot be read: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(raw_bytes.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise checker.fail("", f"is not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise _explain_toml_error(checker, exc) from None
    return _build(checker, raw)


def _build(c: _Checker, raw: dict[str, Any]) -> Taxonomy:
    c.table(raw, "", ("settings", "grammar", "priority", "categories"),
            ("normalize", "entities", "schema"))

    # categories first: other sections refer to their ids
    cats_raw = raw["categories"]
    if not isinstance(cats_raw, dict):
        raise c.fail("categories", f"must be a table of categories, got {_type_name(cats_raw)}")
    categories: dict[str, Category] = {}
    for cat_id, body in cats_raw.items():
        categories[cat_id] = _category(c, cat_id, body)
    if not categories:
        raise c.fail("categories", "must define at least one category")

    s = c.table(raw["settings"], "settings", ("fallback",),
                ("precedence", "pattern_gap", "hint_gap", "negation_window", "max_chars", "code_category"))
    fallback = c.string(s["fallback"], "settings.fallback")
    if fallback not in categories:
        raise c.fail("settings.fallback", f"unknown category id {fallback!r}")
    if categories[fallback].kind != "fallback":
        raise c.fail(f"categories.{fallback}.kind", "the fallback category must have kind = \"fallback\"")
    fallbacks = [cid for cid, cat in categories.items() if cat.kind == "fallback"]
    if len(fallbacks) > 1:
        other = next(cid for cid in fallbacks if cid != fallback)
        raise c.fail(f"categories.{other}.kind", f"only one fallback category is allowed ({fallback!r} is the fallback)")
    precedence_raw = s.get("precedence", [])
    if not isinstance(precedence_raw, list):
        raise c.fail("settings.precedence", f"must be a list of category ids, got {_type_name(precedence_raw)}")
    precedence = []
    for i, cid in enumerate(precedence_raw):
        where = f"settings.precedence[{i}]"
        cid = c.string(cid, where)
        if cid not in categories:
            raise c.fail(where, f"unknown category id {cid!r}")
        if cid in precedence:
            raise c.fail(where, f"{cid!r} is listed twice")
        precedence.append(cid)
    code_category = s.get("code_category")
    if code_category is not None:
        code_category = c.string(code_category, "settings.code_category")
        if code_category not in categories:
            raise c.fail("settings.code_category", f"unknown category id {code_category!r}")
    settings = Settings(
        fallback=fallback,
        precedence=tuple(precedence),
        pattern_gap=c.integer(s.get("pattern_gap", 6), "settings.pattern_gap", 0, 50),
        hint_gap=c.integer(s.get("hint_gap", 4), "settings.hint_gap", 0, 50),
        negation_window=c.integer(s.get("negation_window", 3), "settings.negation_window", 0, 20),
        max_chars=c.integer(s.get("max_chars", 2000), "settings.max_chars", 10, 1_000_000),
        code_category=code_category,
    )

    n = c.table(raw.get("normalize", {}), "normalize", (), ("typos", "english"))
    typos = c.mapping(n.get("typos", {}), "normalize.typos")
    english = c.mapping(n.get("english", {}), "normalize.english")

    g = c.table(raw["grammar"], "grammar", ("negations",),
                ("negation_stops", "hint_stops", "fault_predicates", "particles", "resolved", "greetings", "complements"))
    grammar = Grammar(
        negations=c.words(g["negations"], "grammar.negations", required=True, patterns=False),
        negation_stops=c.words(g.get("negation_stops", []), "grammar.negation_stops", patterns=False),
        hint_stops=c.words(g.get("hint_stops", []), "grammar.hint_stops", patterns=False),
        fault_predicates=c.words(g.get("fault_predicates", []), "grammar.fault_predicates", patterns=False),
        particles=c.words(g.get("particles", []), "grammar.particles", patterns=False),
        resolved=c.words(g.get("resolved", []), "grammar.resolved", patterns=False),
        greetings=c.words(g.get("greetings", []), "grammar.greetings", patterns=False),
        complements=c.words(g.get("complements", []), "grammar.complements", patterns=False),
    )

    p = c.table(raw["priority"], "priority", ("safety", "impact"),
                ("impact_scopes", "impact_stops", "stoppage", "degraded", "neutral",
                 "can_wait", "urgent", "fault_words", "no_backup"))
    priority = PriorityWords(
        safety=c.words(p["safety"], "priority.safety"),
        impact=c.words(p["impact"], "priority.impact"),
        impact_scopes=c.words(p.get("impact_scopes", []), "priority.impact_scopes", patterns=False),
        impact_stops=c.words(p.get("impact_stops", []), "priority.impact_stops", patterns=False),
        stoppage=c.words(p.get("stoppage", []), "priority.stoppage"),
        degraded=c.words(p.get("degraded", []), "priority.degraded"),
        neutral=c.words(p.get("neutral", []), "priority.neutral"),
        can_wait=c.words(p.get("can_wait", []), "priority.can_wait"),
        urgent=c.words(p.get("urgent", []), "priority.urgent"),
        fault_words=c.words(p.get("fault_words", []), "priority.fault_words"),
        no_backup=c.words(p.get("no_backup", []), "priority.no_backup"),
    )

    entities = _entities(c, raw.get("entities", {}))

    for cat in categories.values():
        for i, target in enumerate(cat.absorbs):
            where = f"categories.{cat.id}.absorbs[{i}]"
            if target not in categories:
                raise c.fail(where, f"unknown category id {target!r}")
            if target == cat.id or categories[target].kind != "fault":
                raise c.fail(where, f"{target!r}: only another fault category can be absorbed")
            if target in settings.precedence:
                raise c.fail(where, f"{target!r} is in settings.precedence and always wins")
        if cat.urgent_words and cat.urgent_priority is None:
            raise c.fail(f"categories.{cat.id}.urgent_words", "needs urgent_priority to say what they raise to")

    _check_keywords_unique(c, categories)
    _check_typos_do_not_hide_words(c, typos, categories)

    return Taxonomy(
        path=c.path,
        settings=settings,
        typos=typos,
        english=english,
        grammar=grammar,
        priority=priority,
        entities=entities,
        categories=categories,
    )


_CATEGORY_REQUIRED = ("name", "kind", "priority", "keywords")
_CATEGORY_OPTIONAL = ("urgent_priority", "safety", "weak_keywords", "hints", "hint_predicates", "measures",
                      "stoppage", "absorbs", "urgent_words", "minor_words")


def _category(c: _Checker, cat_id: str, body: Any) -> Category:
    entry = f"categories.{_quote_key(cat_id)}"
    if not _ID_RE.match(cat_id):
        raise c.fail(entry, "category ids are lower-case letters, digits and _ (starting with a letter)")
    if isinstance(body, dict) and "keywords" not in body:
        raise c.fail(entry, "category has no keywords (add keywords = [\"...\"])")
    body = c.table(body, entry, _CATEGORY_REQUIRED, _CATEGORY_OPTIONAL)
    kind = c.string(body["kind"], f"{entry}.kind")
    if kind not in KINDS:
        raise c.fail(f"{entry}.kind", f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    urgent = body.get("urgent_priority")
    return Category(
        id=cat_id,
        name=c.string(body["name"], f"{entry}.name"),
        kind=kind,
        priority=c.priority(body["priority"], f"{entry}.priority"),
        urgent_priority=c.priority(urgent, f"{entry}.urgent_priority") if urgent is not None else None,
        safety=c.boolean(body.get("safety", False), f"{entry}.safety"),
        keywords=c.words(body["keywords"], f"{entry}.keywords", required=True),
        weak_keywords=c.words(body.get("weak_keywords", []), f"{entry}.weak_keywords"),
        hints=c.words(body.get("hints", []), f"{entry}.hints", patterns=False),
        hint_predicates=c.words(body.get("hint_predicates", []), f"{entry}.hint_predicates", patterns=False),
        measures=c.words(body.get("measures", []), f"{entry}.measures", patterns=False),
        stoppage=c.boolean(body.get("stoppage", True), f"{entry}.stoppage"),
        absorbs=_ids(c, body.get("absorbs", []), f"{entry}.absorbs"),
        urgent_words=c.words(body.get("urgent_words", []), f"{entry}.urgent_words"),
        minor_words=c.words(body.get("minor_words", []), f"{entry}.minor_words"),
    )


def _ids(c: _Checker, value: Any, entry: str) -> tuple[str, ...]:
    """A list of category ids (checked against the categories once all are read)."""
    if not isinstance(value, list):
        raise c.fail(entry, f"must be a list of category ids, got {_type_name(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        cid = c.string(item, f"{entry}[{i}]")
        if cid in out:
            raise c.fail(f"{entry}[{i}]", f"{cid!r} is listed twice")
        out.append(cid)
    return tuple(out)


def _check_keywords_unique(c: _Checker, categories: dict[str, Category]) -> None:
    """A word may point to one category only (keywords, weak keywords and hints)."""
    owner: dict[str, str] = {}
    for cat in categories.values():
        for field in ("keywords", "weak_keywords", "hints", "measures"):
            for i, word in enumerate(getattr(cat, field)):
                where = f"categories.{cat.id}.{field}[{i}]"
                if word in owner and not owner[word].startswith(f"categories.{cat.id}."):
                    raise c.fail(where, f"{word!r} is already listed in {owner[word]}; a word can name one category only")
                if word in owner:
                    raise c.fail(where, f"{word!r} is already listed in {owner[word]}")
                owner[word] = where


def _check_typos_do_not_hide_words(c: _Checker, typos: tuple[tuple[str, str], ...],
                                   categories: dict[str, Category]) -> None:
    """A keyword containing a typo entry could never match (the text is corrected first)."""
    if not typos:
        return
    corrections = dict(typos)
    any_typo = re.compile("|".join(re.escape(wrong) for wrong, _ in sorted(typos, key=lambda kv: -len(kv[0]))))
    for cat in categories.values():
        for field in ("keywords", "weak_keywords", "hints", "measures"):
            for i, word in enumerate(getattr(cat, field)):
                m = any_typo.search(word.replace("*", ""))
                if m is not None:
                    wrong, right = m.group(0), corrections[m.group(0)]
                    raise c.fail(
                        f"categories.{cat.id}.{field}[{i}]",
                        f"{word!r} contains {wrong!r}, which normalize.typos rewrites to {right!r}; "
                        "write the corrected form",
                    )


def _entities(c: _Checker, raw: Any) -> EntityWords:
    e = c.table(raw, "entities", (), ("serial_labels", "serial_patterns", "code_prefixes",
                                       "code_words", "code_labels", "location"))
    loc = c.table(e.get("location", {}), "entities.location", (),
                  ("units", "rooms", "floors", "named_sites", "sites", "vague", "device_heads", "determiners",
                   "places"))

    def plain(key: str, table: dict[str, Any], entry: str) -> tuple[str, ...]:
        return c.words(table.get(key, []), f"{entry}.{key}", patterns=False)

    code_words = e.get("code_words", [])
    if not isinstance(code_words, list) or not all(isinstance(w, str) and w.strip() for w in code_words):
        raise c.fail("entities.code_words", "must be a list of non-empty strings")
    for i, w in enumerate(code_words):
        if not re.fullmatch(r"[A-Z]{1,6}", w.strip()):
            raise c.fail(f"entities.code_words[{i}]", f"{w!r}: code words are 1-6 capital letters")
    prefixes = plain("code_prefixes", e, "entities")
    for i, w in enumerate(prefixes):
        if not re.fullmatch(r"[a-z]{1,8}", w):
            raise c.fail(f"entities.code_prefixes[{i}]", f"{w!r}: prefixes are 1-8 letters")
    return EntityWords(
        serial_labels=plain("serial_labels", e, "entities"),
        serial_patterns=c.regexes(e.get("serial_patterns", []), "entities.serial_patterns"),
        code_prefixes=prefixes,
        code_words=tuple(w.strip() for w in code_words),
        code_labels=plain("code_labels", e, "entities"),
        location=LocationWords(
            units=plain("units", loc, "entities.location"),
            rooms=plain("rooms", loc, "entities.location"),
            floors=plain("floors", loc, "entities.location"),
            named_sites=plain("named_sites", loc, "entities.location"),
            sites=plain("sites", loc, "entities.location"),
            vague=plain("vague", loc, "entities.location"),
            device_heads=plain("device_heads", loc, "entities.location"),
            determiners=plain("determiners", loc, "entities.location"),
            places=plain("places", loc, "entities.location"),
        ),
    )
