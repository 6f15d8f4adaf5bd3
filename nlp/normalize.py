"""Text normalisation for chat and voice-input fault reports.

Two forms of a report are produced:

* ``display`` keeps the customer's letters and digits as typed (after NFKC,
  traditional -> simplified and emoji removal); entities are read from it.
* ``match`` is lower-cased, has English words mapped to Chinese, typos and
  homophones corrected and whitespace next to Chinese characters removed;
  keywords are matched against it.

The vocabulary (typos, English words) comes from the taxonomy file; this
module only holds the mechanics.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path
from typing import Iterable

__all__ = ["Normalizer", "to_simplified", "basic_form"]

# Emoji and pictographs, variation selectors, zero-width joiners and the
# bracketed sticker names that chat clients insert ([捂脸], [图片]).
_EMOJI_RE = re.compile(
    "["
    "\U0001F000-\U0001FAFF"
    "\U00002600-\U000027BF"
    "\U00002B00-\U00002BFF"
    "\U00002300-\U000023FF"
    "\U0000FE00-\U0000FE0F"
    "\U0000200B-\U0000200F"
    "\U00003030\U0000303D\U00003297\U00003299"
    "\U000E0000-\U000E007F"
    "]+"
    r"|\[[\u4e00-\u9fff]{1,4}\]"
)
# (?=\s) first: a position without a space is left after one test, before any lookbehind
_SPACE_NEAR_HAN_RE = re.compile(r"(?=\s)(?:\s+(?=[\u3400-\u9fff])|(?<=[\u3400-\u9fff])\s+)")
_ASCII_LETTER_RE = re.compile(r"[a-z]")
_CLAUSE_END_RE = re.compile(r"[\s,.!?;:，。！？；：、~…()\[\]【】（）「」\"']")
_CLAUSE_MAX = 24  # a readable impact clause; a longer one is cut to the impact itself
# The full-width punctuation of Chinese typing, each with its compatibility decomposition. A character
# replaced by its own decomposition leaves NFKC's result unchanged (NFKC composes the decompositions of
# the characters), and a report whose only such characters are these then passes NFKC's quick check
# instead of being normalised in full (about 3 us for a report with a ，).
_FULL_WIDTH = tuple((ch, unicodedata.normalize("NFKD", ch)) for ch in "，？！～：；（）")


@functools.cache
def _traditional_chars() -> frozenset[str]:
    """Characters that OpenCC's t2s table changes (read once from OpenCC's data)."""
    import opencc

    table = Path(opencc.__file__).parent / "dictionary" / "TSCharacters.txt"
    chars = set()
    with open(table, encoding="utf-8") as fh:
        for line in fh:
            key, _, values = line.rstrip("\n").partition("\t")
            if len(key) == 1 and values and values.split(" ", 1)[0] != key:
                chars.add(key)
    return frozenset(chars)


@functools.cache
def _traditional_tests() -> tuple[re.Pattern[str], frozenset[str]]:
    """A regex class of the traditional characters in the BMP, and those beyond it.

    A class of BMP characters is a character table to the regex engine, one
    test per character of the text, about four times quicker than testing the
    text against the set; the few beyond the BMP (which the table cannot hold)
    are tested with the set, and only in a text that has such characters.
    """
    chars = _traditional_chars()
    bmp = "".join(re.escape(ch) for ch in sorted(chars) if ord(ch) <= 0xFFFF)
    return re.compile(f"[{bmp}]" if bmp else "(?!)"), frozenset(ch for ch in chars if ord(ch) > 0xFFFF)


_BEYOND_BMP_RE = re.compile("[\U00010000-\U0010FFFF]")


@functools.cache
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


def _nfkc(text: str) -> str:
    """unicodedata.normalize("NFKC", text), quicker for text whose only full-width characters are punctuation."""
    if unicodedata.is_normalized("NFKC", text):
        return text
    for ch, plain in _FULL_WIDTH:
        text = text.replace(ch, plain)
    return unicodedata.normalize("NFKC", text)


def _may_have_space(text: str) -> bool:
    """False when `text` has no character that \\s matches (a quick test before the space regexes).

    Every white-space character but the ASCII space is unprintable (a control
    or separator character), so a printable text without a space has none.
    """
    return " " in text or not text.isprintable()


def has_traditional(text: str) -> bool:
    """True when the text has a character that the simplified form changes (樓, 電)."""
    in_bmp, beyond = _traditional_tests()
    if in_bmp.search(text) is not None:
        return True
    return bool(beyond) and _BEYOND_BMP_RE.search(text) is not None and not beyond.isdisjoint(text)


def to_simplified(text: str) -> str:
    """Traditional -> simplified; OpenCC runs only when a traditional character is present."""
    if not has_traditional(text):
        return text
    return _t2s().convert(text)


def basic_form(text: str) -> str:
    """NFKC, simplified characters, lower case: the form taxonomy words are stored in."""
    return to_simplified(_nfkc(text)).lower().strip()


def _longest_first(words: Iterable[str]) -> str:
    """A regex matching, at a position, the longest of `words` there first, then shorter ones.

    It behaves as the alternation of the words longest first, but is written
    as a trie (压力(?:偏地|底|…)), so the engine tests a character per level
    instead of trying every word in turn. The words that can match at one
    position are prefixes of one another, so they lie on one path of the trie;
    each node tries its longer continuations before ending there, which keeps
    the longest-first order along that path (also when the engine backtracks,
    as it does when a check after the words fails).
    """
    trie: dict[str, dict] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}  # a word ends here

    def pattern(node: dict[str, dict]) -> str:
        alternatives = [re.escape(ch) + pattern(child) for ch, child in sorted(node.items()) if ch]
        if "" in node and alternatives:
            alternatives.append("")  # ending here comes after every longer word
        if len(alternatives) <= 1:
            return "".join(alternatives)
        return "(?:" + "|".join(alternatives) + ")"

    return pattern(trie)


class Normalizer:
    """Turns raw report text into its display and match forms."""

    def __init__(
        self,
        typos: tuple[tuple[str, str], ...],
        english: tuple[tuple[str, str], ...],
        max_chars: int,
    ) -> None:
        self._max_chars = max_chars
        # the traditional-character tests (7 ms) are built with the normaliser rather than on the first
        # report: the classify command's forked workers then share them instead of each building its own
        _traditional_tests()
        # one regex of the typo entries, longest first: a left-to-right pass replaces the longest
        # entry at each position (the first entry wins among repeats)
        self._typo_table: dict[str, str] = {}
        for wrong, right in typos:
            self._typo_table.setdefault(wrong, right)
        self._typo_re = re.compile(_longest_first(self._typo_table)) if self._typo_table else None
        self._english = dict(english)
        if english:
            # the lookahead on the words' first letters lets the regex skip every other position
            # at once (a Chinese report would otherwise try every word at every character)
            firsts = "".join(re.escape(ch) for ch in sorted({w[0] for w in self._english}))
            self._english_re: re.Pattern[str] | None = re.compile(
                rf"(?=[{firsts}])(?<![a-z])(?:{_longest_first(self._english)})(?![a-z])"
            )
        else:
            self._english_re = None

    def __call__(self, text: str) -> tuple[str, str]:
        if len(text) > self._max_chars:
            text = text[: self._max_chars]
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            text = text.encode("utf-8", "replace").decode("utf-8")
        if not text.isascii():
            text = _nfkc(text).replace("\u2019", "'")
            text = to_simplified(text)
            text = _EMOJI_RE.sub("", text)
            if _may_have_space(text):
                text = _SPACE_NEAR_HAN_RE.sub("", text)
        display = text.strip()

        match = display.lower()
        if self._english_re is not None and _ASCII_LETTER_RE.search(match):
            english = self._english
            match = self._english_re.sub(lambda m: english[m.group(0)], match)
            match = _SPACE_NEAR_HAN_RE.sub("", match)
        # no test for the entries' first characters first: nearly every report has one, and the
        # regex leaves the other positions after one character test
        match = self._fix_typos(match)
        return display, match

    def as_written(self, text: str, display: str, value: str) -> str:
        """`value`, found in the display form, in the customer's own characters (一樓大堂, not 一楼大堂).

        Only traditional characters differ between the two forms; where the
        simplified text has another length the display value is kept.
        """
        if len(text) > self._max_chars:
            text = text[: self._max_chars]
        written = _nfkc(text).replace("\u2019", "'")
        written = _SPACE_NEAR_HAN_RE.sub("", _EMOJI_RE.sub("", written)).strip()
        at = display.find(value)
        if at < 0 or len(written) != len(display):
            return value
        return written[at:at + len(value)]

    def clause_of(self, text: str, phrase: str) -> str | None:
        """The clause of the raw report that holds `phrase` (match form), as the customer wrote it.

        Clauses end at punctuation and at spaces (冷库温度上来了 里面几吨冻肉要化了 ->
        里面几吨冻肉要化了). A clause longer than _CLAUSE_MAX characters gives the
        phrase alone; a phrase changed by the typo or English tables is not found (None).
        """
        if not phrase:
            return None
        if len(text) > self._max_chars:
            text = text[: self._max_chars]
        source = _EMOJI_RE.sub("", to_simplified(_nfkc(text)))
        at = source.lower().find(phrase)
        if at >= 0:
            start, end = at, at + len(phrase)
        else:  # spaces inside the phrase as written (全公司 都停了)
            pattern = r"\s*".join(re.escape(ch) for ch in phrase if not ch.isspace())
            m = re.search(pattern, source, re.IGNORECASE)
            if m is None:
                return None
            start, end = m.start(), m.end()
        found = source[start:end]
        while start > 0 and not _CLAUSE_END_RE.match(source[start - 1]):
            start -= 1
        while end < len(source) and not _CLAUSE_END_RE.match(source[end]):
            end += 1
        clause = source[start:end]
        return clause if len(clause) <= _CLAUSE_MAX else found

    def _fix_typos(self, text: str) -> str:
        """Replace typo entries left to right, the longest entry at each position first."""
        if self._typo_re is None:
            return text
        table = self._typo_table
        return self._typo_re.sub(lambda m: table[m.group(0)], text)
