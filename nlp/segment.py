"""Word segmentation with jieba's dictionary and the taxonomy's words.

The dictionary the segmenter needs is prepared once per taxonomy and kept as
a marshal file under ``$RELAYDESK_DATA_DIR`` (default ``./data``), or the user
cache dir when that is not writable. Preparing it (jieba's main dictionary
plus the taxonomy's words, added as ``jieba.Tokenizer.add_word`` does) takes
a few seconds and happens only when the taxonomy's words change; a warm start
loads the prepared file and never imports jieba.

The prepared dictionary keeps the words that can change what the classifier
sees: every word of one or two characters and every longer word that contains
a taxonomy word (影响 for 响, 不锈钢 for 锈). Longer words elsewhere in a clause
only decide how unrelated text is split; the full dictionary's total is kept,
so every kept word has the probability it has in jieba. On the labelled sets
and 8 000 noisy reports the classifications are the same as with the full
dictionary, which is 2.7 times larger and several times slower to load.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import marshal
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable

__all__ = ["Segmenter", "cache_dir"]

CACHE_NAME = "jieba.cache"
_PREPARED_FORMAT = 2  # bump when the preparation below changes
_PREFIX = 1.0  # marks a prefix that is not a word itself (a word's log-probability is negative)
_SHORT_WORD = 2  # dictionary words this short are always kept

_log = logging.getLogger(__name__)


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _user_cache_dir() -> Path:
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = str(Path.home() / "Library" / "Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "relaydesk"


def cache_dir() -> Path:
    """Where jieba's dictionary cache lives: $RELAYDESK_DATA_DIR (default ./data), else the user cache dir."""
    candidates = [Path(os.environ.get("RELAYDESK_DATA_DIR") or "data"), _user_cache_dir()]
    for candidate in candidates:
        if _writable_dir(candidate):
            return candidate
    return Path(tempfile.gettempdir())


def _jieba_dictionary_file() -> Path:
    """jieba's dict.txt, found without importing jieba (its import is slow)."""
    spec = importlib.util.find_spec("jieba")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the jieba package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "dict.txt"


def _full_dictionary(words: list[str]) -> tuple[dict[str, int], int]:
    """jieba's main dictionary with `words` added as jieba adds user words (slow: imports jieba)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    tokenizer = jieba.Tokenizer()
    tokenizer.cache_file = str(cache_dir().resolve() / CACHE_NAME)
    tokenizer.initialize()
    for word in words:
        tokenizer.add_word(word)
    return tokenizer.FREQ, tokenizer.total


def _prepare(words: list[str], anchors: list[str]) -> tuple[dict[str, float], float]:
    """The dictionary the segmenter uses: short words and words containing an anchor (a taxonomy word).

    Each word maps to its log-probability in jieba's full dictionary; the
    prefixes of words map to _PREFIX, so the word graph search knows to go on.
    """
    full, total = _full_dictionary(words)
    wanted = set(anchors) | set(words)
    longest = max((len(w) for w in wanted), default=0)

    def contains_wanted(word: str) -> bool:
        n = len(word)
        return any(word[i:j] in wanted for i in range(n) for j in range(i + 1, min(n, i + longest) + 1))

    log_total = math.log(total)
    freq: dict[str, float] = {}
    for word, count in full.items():
        if count and (len(word) <= _SHORT_WORD or contains_wanted(word)):
            freq[word] = math.log(count) - log_total
    for word in list(freq):
        for i in range(1, len(word)):
            freq.setdefault(word[:i], _PREFIX)
    return freq, log_total


@functools.cache
def _dictionary(words: tuple[str, ...], anchors: tuple[str, ...]) -> tuple[dict[str, float], float]:
    """The prepared dictionary for these words: from its cache file, else prepared and saved."""
    source = _jieba_dictionary_file()
    stat = source.stat()
    key = hashlib.sha1("\n".join((str(_PREPARED_FORMAT), str(stat.st_size), str(int(stat.st_mtime)),
                                   *words, "", *anchors)).encode("utf-8")).hexdigest()[:16]
    path = cache_dir() / f"segmenter-{key}.marshal"
    try:
        with open(path, "rb") as fh:
            # one read, then loads: marshal.load on a file reads it in many small calls, three times slower
            freq, log_total = marshal.loads(fh.read())
        return freq, log_total
    except (OSError, EOFError, ValueError, TypeError):
        pass
    freq, log_total = _prepare(list(words), list(anchors))
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".segmenter-")
        with os.fdopen(fd, "wb") as fh:
            marshal.dump((freq, log_total), fh)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only place: prepare again next time
        _log.warning("cannot save the prepared segmenter dictionary to %s: %s", path, exc)
    return freq, log_total


class Segmenter:
    """Dictionary segmentation (jieba's, without the HMM) with the taxonomy's words."""

    def __init__(self, words: Iterable[str], anchors: Iterable[str] = ()) -> None:
        """`words` are added to jieba's dictionary; dictionary words containing an anchor or a word are kept."""
        self._log_prob, self._log_total = _dictionary(tuple(sorted(set(words))), tuple(sorted(set(anchors))))

    def is_word(self, word: str) -> bool:
        """True for a word of the prepared dictionary (every word given to the constructor is one)."""
        return self._log_prob.get(word, _PREFIX) < 0.0

    def cut(self, text: str) -> list[str]:
        """Tokens covering the whole text (their concatenation is the text).

        As jieba's ``cut(HMM=False)``: the word graph of the text (jieba's
        ``get_DAG``) and the most probable route through it, ties going to the
        longer word. (Runs of Latin letters and digits are not merged into one
        token, which does not matter for matching.)
        """
        nxt, _ = self.scan(text)
        tokens = []
        x = 0
        while x < len(text):
            y = nxt[x]
            tokens.append(text[x:y])
            x = y
        return tokens

    def scan(self, text: str, breaks: frozenset[str] = frozenset(),
             words: frozenset[str] = frozenset()) -> tuple[list[int], list[tuple[int, int, str]]]:
        """The best route through each clause of the text, and where `words` (dictionary words) occur.

        Clauses end at a character of `breaks`, which belongs to no clause and
        no word; each clause is segmented on its own, as :meth:`cut` would
        segment it alone. Returns (nxt, found): a token starting at k ends at
        nxt[k] (follow nxt from a clause's start to its end for its tokens),
        and found holds (start, end, word) for every occurrence of a word of
        `words`, overlaps included, in no particular order.

        Graph and route are computed in one backward pass over the prepared
        log-probabilities: at each position the dictionary words starting there
        are found by extending the text one character at a time while it is
        still a word or the prefix of one, which also finds every occurrence
        of `words` (each is a dictionary word, so its prefixes are all there).
        """
        n = len(text)
        get = self._log_prob.get
        unknown = -self._log_total  # a character the dictionary does not know: a token of its own
        inf = -math.inf
        score = [0.0] * (n + 1)  # a clause's end (a break or the text's end) scores 0
        nxt = list(range(1, n + 2))  # a token of one character unless a better word starts here
        found: list[tuple[int, int, str]] = []
        clause_end = n
        for k in range(n - 1, -1, -1):
            ch = text[k]
            if ch in breaks:
                clause_end = k
                continue
            lp = get(ch)
            if lp is None:
                score[k] = unknown + score[k + 1]
                continue
            if lp < 0.0:
                best = lp + score[k + 1]
                if ch in words:
                    found.append((k, k + 1, ch))
            else:
                best = inf
            best_end = k + 1
            end = k + 2
            while end <= clause_end:
                part = text[k:end]
                lp = get(part)
                if lp is None:
                    break
                if lp < 0.0:
                    value = lp + score[end]
                    # ends only grow: an equal value goes to the longer word
                    if value >= best:
                        best, best_end = value, end
                    if part in words:
                        found.append((k, end, part))
                end += 1
            if best == inf:  # only prefixes of words start here: a token of its own
                best = unknown + score[k + 1]
            score[k] = best
            nxt[k] = best_end
        return nxt, found
