"""Entity extraction: serial, phone, location, error code.

Rules follow docs/TAXONOMY.md; the vocabulary (labels, code prefixes, place
nouns) comes from the taxonomy file's [entities] section.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .taxonomy import EntityWords

__all__ = ["Entities", "EntityExtractor"]

_HAN = r"\u4e00-\u9fff"
# characters that never belong to a place name (function words, pronouns, verbs of chat)
_NAME_STOP = "址置点的了在是到去送进和与跟从往向把被就都也还又我你他她它们这那个哪些每各有没不很太要想能会说给让请问吗呢吧啊呀嘛哦喂整全该其另某几多少台里边"
_NAME_CHAR = rf"(?:(?![{_NAME_STOP}])[{_HAN}])"
# _ID_START: the characters an identifier starts with, tested once before the alternatives
_ID_START = r"(?=[\dA-Za-z一二三四五六七八九十两东南西北])"
_ID = r"(?:(?<![0-9A-Za-z.])\d{1,4}|(?<![A-Za-z0-9])[A-Za-z]{1,2}\d{0,2}|[一二三四五六七八九十两]{1,3}|[东南西北]{1,2})"

_CN_DIGITS = {"零": "0", "〇": "0", "一": "1", "幺": "1", "二": "2", "两": "2", "三": "3", "四": "4",
              "五": "5", "六": "6", "七": "7", "八": "8", "九": "9"}

_MAX_ELEMENTS = 5  # place elements in one location (滨海工业园 + 5号厂房 + 2楼 + 泵房)
_DIGIT_RE = re.compile(r"[0-9]")
_CAPITALS_RE = re.compile(r"[A-Z]{2}")
_PHONE_RE = re.compile(r"(?=[+018])(?<![0-9])(?:(?:\+|00)?86[\s-]?)?(1[3-9]\d(?:[\s-]?\d){8})(?![0-9])")
_CN_PHONE_RE = re.compile(r"(?<![零〇一幺二两三四五六七八九])[一幺][三四五六七八九][零〇一幺二两三四五六七八九]{9}(?![零〇一幺二两三四五六七八九])")


class Entities(NamedTuple):
    """What one report names (a tuple: built once per report, cheaply)."""

    serial: str | None = None
    location: str | None = None
    error_code: str | None = None
    phone: str | None = None


def _alternation(words: tuple[str, ...] | list[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))


def _starts(words: tuple[str, ...] | list[str] | str) -> str:
    """A lookahead for the first characters of `words` (or the characters of a string).

    Put before an alternation of many words it changes nothing a pattern
    matches, but lets the regex engine leave a position after one character
    test instead of trying every word (or every word after every name length).
    """
    chars = sorted(set(words) if isinstance(words, str) else {w[0] for w in words if w})
    return "(?=[" + "".join(re.escape(ch) for ch in chars) + "])" if chars else "(?!)"


def _soon(words: tuple[str, ...]) -> str:
    """A lookahead for the first character of one of `words` after at most four Han characters.

    It tests what (?=[<Han>]{0,4}[firsts]) tests, without backtracking:
    the Han characters that are not first characters are passed possessively
    (at most four), and the character after them must be a first character.
    Both hold exactly when a first character comes within five characters
    with only Han characters before it. A position then costs at most five
    character tests instead of up to nine, and the location search runs over
    most reports.
    """
    firsts = sorted({w[0] for w in words if w})
    if not firsts:
        return "(?!)"
    others = []  # the Han range (_HAN) without the first characters, as ranges
    low = 0x4E00
    for code in sorted(ord(ch) for ch in firsts if 0x4E00 <= ord(ch) <= 0x9FFF):
        if code > low:
            others.append((low, code - 1))
        low = code + 1
    if low <= 0x9FFF:
        others.append((low, 0x9FFF))
    passed = "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in others)
    first = "".join(re.escape(ch) for ch in firsts)
    return (f"(?=[{passed}]{{0,4}}+[{first}])" if passed else f"(?=[{first}])")


def _place_alternation(words: tuple[str, ...]) -> str:
    """Like _alternation, with 号 also written as # (3#楼, 4#线)."""
    return _alternation(words).replace("号", "(?:号|#)")


class EntityExtractor:
    def __init__(self, words: EntityWords) -> None:
        labels = _alternation(words.serial_labels) or "(?!)"
        self._serial_re = re.compile(
            rf"{_starts(words.serial_labels)}(?<![A-Za-z手])(?:{labels})\s*(?:号码|号|码)?\s*(?:[:=#]|是|为)?\s*"
            r"([A-Za-z0-9][A-Za-z0-9_/.\-]*)",
            re.IGNORECASE,
        )
        self._serial_patterns = [re.compile(rf"(?<![A-Za-z0-9-])(?:{p})(?![A-Za-z0-9])") for p in words.serial_patterns]

        prefixes = _alternation(words.code_prefixes) or "(?!)"
        code_words = _alternation(words.code_words) or "(?!)"
        code_labels = _alternation(words.code_labels) or "(?!)"
        # each with a character every match of it holds ("" for none): without it in the text the
        # pattern is not run (most reports have digits, few a dot, a dash or an "Err 7")
        self._code_res = [
            # E.OC3, A.C90 (dotted display codes)
            (".", re.compile(r"(?=[A-Za-z])(?<![A-Za-z0-9.])([Ee]\.[A-Za-z]{1,4}\d{0,3}|[A-Za-z]\.(?=[A-Za-z0-9]*\d)[A-Za-z0-9]{2,5})(?![A-Za-z0-9.])")),
            # E03, F0012, AL-21, Err05, Er-3, OC1
            ("", re.compile(rf"{_starts(words.code_prefixes)}(?<![A-Za-z0-9.\-])((?:{prefixes})[-.]?\d{{1,6}})(?![A-Za-z0-9]|\.\d|[栋楼层区号座幢线])", re.IGNORECASE)),
            # OC, OH ... written alone in capitals
            ("", re.compile(rf"{_starts(words.code_words)}(?<![A-Za-z0-9])((?:{code_words})\d{{0,3}})(?![A-Za-z0-9])")),
            # 故障码 14, 代码0x0000007B
            ("", re.compile(rf"{_starts(words.code_labels)}(?:{code_labels})\s*[:=]?\s*(0[xX][0-9A-Fa-f]{{1,8}}|\d{{1,6}})(?![0-9A-Za-z])", re.IGNORECASE)),
            # Err 7, AL 21: a prefix in capitals and the number after one space
            (" ", re.compile(r"(?=[EA])(?<![A-Za-z0-9])((?:Err|ERR|Er|ER|AL|ALM|E) \d{1,4})(?![0-9A-Za-z.])")),
            # P-02, H-15: one capital, a dash and the number
            ("-", re.compile(r"(?=[A-Z])(?<![A-Za-z0-9\-])([A-Z]-\d{1,4})(?![0-9A-Za-z]|\.\d|[栋楼层区号座幢线])")),
        ]

        loc = words.location
        units = _place_alternation(loc.units)
        rooms = _alternation(loc.rooms)
        places = _alternation(loc.places)
        floors = _alternation(loc.floors)
        named = _alternation(loc.named_sites)
        sites = _alternation(loc.sites)
        parts = []
        if units:
            parts.append(rf"{_ID_START}(?P<id>{_ID}(?:{units}))")
        if rooms:
            parts.append(rf"{_ID_START}(?P<idroom>{_ID}(?:号|#)(?:{rooms}))")
        parts.append(_starts("地负B" + "".join(w[0] for w in loc.floors if w))
                     + r"(?P<floor>地下[一二三四五\d]层|负[一二三四五\d]层|(?<![A-Za-z])B\d层?"
                     + (rf"|{floors}" if floors else "") + ")")
        if sites:
            # a site's name is Han characters before the site word: its first character comes soon
            parts.append(rf"{_soon(loc.sites)}(?P<site>{_NAME_CHAR}{{0,4}}?(?:{sites}))")
        if named:
            parts.append(rf"{_soon(loc.named_sites)}(?P<named>{_NAME_CHAR}{{0,4}}?(?:{named}))")
        # a door number after a unit (3单元602)
        parts.append(r"(?P<door>(?<=单元)\d{3,4}(?:室|号)?(?![0-9]))")
        if places:
            parts.append(rf"{_starts(loc.places)}(?P<place>{places})")
        if rooms:
            parts.append(rf"{_starts(loc.rooms)}(?P<room>{rooms})")
        self._element_re = re.compile("|".join(parts))
        # every place element ends with one of these characters (a regex class: one table test per
        # character, quicker than testing the text against a set)
        ends = {w[-1] for w in loc.units + loc.rooms + loc.floors + loc.named_sites + loc.sites + loc.places} | {"层"}
        self._location_char_re = re.compile("[" + "".join(re.escape(ch) for ch in sorted(ends)) + "]")
        # one-character qualifiers (新, 老) make a site vague only as its whole name (老厂房, not 老港工业园)
        self._vague = tuple(sorted((w for w in loc.vague if len(w) > 1), key=len, reverse=True))
        self._vague_exact = frozenset(w for w in loc.vague if len(w) == 1)
        self._device_heads = tuple(loc.device_heads)
        self._determiners = tuple(loc.determiners)
        self._sites = tuple(sorted(loc.named_sites, key=len, reverse=True))

    # ------------------------------------------------------------------

    def extract(self, text: str) -> Entities:
        if not text:
            return Entities()
        taken: list[tuple[int, int]] = []
        has_digit = _DIGIT_RE.search(text) is not None
        phone = serial = error_code = location = None
        if has_digit or "一" in text or "幺" in text:
            phone = self._phone(text, taken)
        if has_digit:
            serial = self._serial(text, taken)
        if has_digit or _CAPITALS_RE.search(text):
            error_code = self._error_code(text, taken)
        if self._location_char_re.search(text) is not None:
            location = self._location(text)
        return Entities(serial=serial, location=location, error_code=error_code, phone=phone)

    # phone -----------------------------------------------------------

    def _phone(self, text: str, taken: list[tuple[int, int]]) -> str | None:
        m = _PHONE_RE.search(text)
        if m:
            taken.append(m.span())
            return re.sub(r"\D", "", m.group(1))
        m = _CN_PHONE_RE.search(text)
        if m:
            taken.append(m.span())
            return "".join(_CN_DIGITS[ch] for ch in m.group(0))
        return None

    # serial ----------------------------------------------------------

    def _serial(self, text: str, taken: list[tuple[int, int]]) -> str | None:
        for m in self._serial_re.finditer(text):
            value = m.group(1).rstrip("-_/.")
            if len(value) < 3 or not any(ch.isdigit() for ch in value):
                continue
            start = m.start(1)
            end = start + len(value)
            if _overlaps(start, end, taken) or _PHONE_RE.fullmatch(value):
                continue
            taken.append((start, end))
            return value
        for pattern in self._serial_patterns:
            for m in pattern.finditer(text):
                if not _overlaps(m.start(), m.end(), taken):
                    taken.append(m.span())
                    return m.group(0)
        return None

    # error code ------------------------------------------------------

    def _error_code(self, text: str, taken: list[tuple[int, int]]) -> str | None:
        best: tuple[int, str] | None = None
        for needed, pattern in self._code_res:
            if needed not in text:
                continue
            for m in pattern.finditer(text):
                start, end = m.span(1)
                if _overlaps(start, end, taken):
                    continue
                if "型号" in text[max(0, start - 4):start]:
                    continue
                if best is None or start < best[0]:
                    best = (start, m.group(1))
                break
        return best[1] if best else None

    # location --------------------------------------------------------

    def _location(self, text: str) -> str | None:
        best: tuple[int, int, str] | None = None  # (-score, start, value)
        pos = 0
        n = len(text)
        while pos < n:
            m = self._element_re.search(text, pos)
            if m is None:
                break
            chain = [m]
            end = m.end()
            while end < n and len(chain) < _MAX_ELEMENTS:
                nxt = self._element_re.match(text, end)
                if nxt is None or nxt.end() == end:
                    break
                chain.append(nxt)
                end = nxt.end()
            accepted = self._accept(text, chain)
            if accepted is not None:
                start, label, score = accepted
                key = (-score, start, label)
                if best is None or key < best:
                    best = key
            pos = max(end, m.start() + 1)
        return best[2] if best else None

    def _accept(self, text: str, chain: list[re.Match[str]]) -> tuple[int, str, int] | None:
        """(start, text, score) of a specific place, or None when the chain is vague."""
        chain = list(chain)
        # a vague named element at the start does not count (整个车间, 我们车间, 整个生产车间)
        while chain and chain[0].lastgroup == "named" and (
                self._is_vague(chain[0].group(0))
                or text[:chain[0].start()].endswith(self._determiners)):
            chain.pop(0)
        # a room right before a device name is part of that name (冷却塔风机, 2号冷却塔风机)
        if chain and chain[-1].lastgroup in ("room", "idroom", "place") and (
                len(chain) > 1 or chain[-1].lastgroup == "idroom"):
            if text.startswith(self._device_heads, chain[-1].end()):
                chain.pop()
        if not chain:
            return None
        kinds = [el.lastgroup for el in chain]
        identified = any(k in ("id", "idroom", "named", "site", "place") for k in kinds)
        if not identified and not (len(chain) >= 2 and "floor" in kinds):
            # a bare room or floor is vague; a floor qualifying a room is specific (屋顶水箱间)
            return None
        start = chain[0].start()
        return start, text[start:chain[-1].end()], len(chain) + (1 if identified else 0)

    def _is_vague(self, name: str) -> bool:
        stem = name
        for site in self._sites:
            if stem.endswith(site):
                stem = stem[: -len(site)]
                break
        return not stem or stem in self._vague_exact or stem.startswith(self._vague)


def _overlaps(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    return any(start < e and s < end for s, e in spans)
