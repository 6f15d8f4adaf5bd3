"""The quick forms of the normaliser's, the location search's and the traditional-character tests match the plain forms."""
from __future__ import annotations

import random
import re
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nlp.entities import _soon  # noqa: E402
from nlp.normalize import (  # noqa: E402
    _FULL_WIDTH, _longest_first, _may_have_space, _nfkc, _traditional_chars, has_traditional)


def _plain_longest_first(words: set[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def test_trie_matches_as_the_longest_first_alternation():
    rnd = random.Random(1)
    for _ in range(1500):
        words = {"".join(rnd.choice("ab压力底#") for _ in range(rnd.randrange(1, 5)))
                 for _ in range(rnd.randrange(1, 15))}
        for suffix in ("", "(?![a])"):  # a check after the words makes the engine backtrack into them
            plain = re.compile(f"(?:{_plain_longest_first(words)}){suffix}")
            trie = re.compile(f"(?:{_longest_first(words)}){suffix}")
            for _ in range(20):
                text = "".join(rnd.choice("ab压力底#x") for _ in range(rnd.randrange(0, 14)))
                assert [m.span() for m in trie.finditer(text)] == [m.span() for m in plain.finditer(text)], (
                    words, suffix, text)


def test_nfkc_is_unicode_nfkc():
    rnd = random.Random(2)
    # the replaced punctuation among combining marks, other compatibility characters, Hangul jamo, kana
    codes = (list(range(0x300, 0x370)) + list(range(0xFF00, 0xFF70)) + list(range(0x1100, 0x1176))
             + [0x3099, 0x309A, 0x304B, 0x306F, 0x212B, 0x41, 0x61, 0x2026, 0x3000, 0x4E00, 0xAC00, 0x11A8,
                0x338F, 0x1E0A, 0x323, 0x2F00, 0xFB01, 0x1D400])
    pool = [ch for ch, _ in _FULL_WIDTH] + [chr(c) for c in codes]
    for _ in range(50000):
        text = "".join(rnd.choice(pool) for _ in range(rnd.randrange(0, 10)))
        assert _nfkc(text) == unicodedata.normalize("NFKC", text), ascii(text)
    assert _nfkc("电机不转了，怎么办？") == "电机不转了,怎么办?"


def test_every_white_space_character_is_seen():
    space = re.compile(r"\s")
    missed = [hex(c) for c in range(sys.maxunicode + 1)
              if space.match(chr(c)) and not _may_have_space(f"电{chr(c)}机")]
    assert not missed
    assert not _may_have_space("电机不转了😭")


def test_site_lookahead_holds_where_the_backtracking_one_does():
    rnd = random.Random(3)
    words = ("办公楼", "教学楼", "产业园", "A座")
    plain = re.compile(r"(?=[\u4e00-\u9fff]{0,4}[办教产A])")
    quick = re.compile(_soon(words))
    pool = list("办教产A座楼公学业园的在东一") + ["3", " ", "。"]
    for _ in range(20000):
        text = "".join(rnd.choice(pool) for _ in range(rnd.randrange(0, 12)))
        assert ([m.start() for m in quick.finditer(text)] == [m.start() for m in plain.finditer(text)]), text


def test_traditional_characters_are_found_in_and_beyond_the_bmp():
    chars = _traditional_chars()
    assert any(ord(ch) > 0xFFFF for ch in chars)  # the set test beyond the BMP is exercised
    for ch in chars:
        assert has_traditional(f"电{ch}机"), ascii(ch)
    rnd = random.Random(4)
    pool = sorted(chars) + list("电机不转了楼😭🙏a 1，") + [chr(c) for c in range(0x20000, 0x20100)]
    for _ in range(20000):
        text = "".join(rnd.choice(pool) if rnd.random() < 0.2 else rnd.choice("电机不转了😭𠀀a")
                       for _ in range(rnd.randrange(0, 8)))
        assert has_traditional(text) == (not chars.isdisjoint(text)), ascii(text)
