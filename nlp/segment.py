"""Word segmentation with a private jieba tokenizer.

jieba's main dictionary is loaded once per process from a cache file kept
under ``$RELAYDESK_DATA_DIR`` (default ``./data``), or the user cache dir
when that is not writable, so it is not rebuilt on every start. Each
:class:`Segmenter` gets its own tokenizer with the taxonomy's words added,
so domain words (变频器, 机封, 跳闸 ...) stay whole.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable

import jieba

__all__ = ["Segmenter", "cache_dir"]

CACHE_NAME = "jieba.cache"
_LOG_CACHE_LIMIT = 200_000

jieba.setLogLevel(logging.WARNING)


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


@functools.cache
def _main_dictionary() -> tuple[dict[str, int], int]:
    """jieba's main dictionary (word -> frequency, total), loaded once per process."""
    tokenizer = jieba.Tokenizer()
    tokenizer.cache_file = str(cache_dir().resolve() / CACHE_NAME)
    tokenizer.initialize()
    return tokenizer.FREQ, tokenizer.total


class Segmenter:
    """A private jieba tokenizer that knows the taxonomy's words."""

    def __init__(self, words: Iterable[str]) -> None:
        freq, total = _main_dictionary()
        tokenizer = jieba.Tokenizer()
        tokenizer.FREQ = dict(freq)
        tokenizer.total = total
        tokenizer.initialized = True
        for word in sorted(words):
            tokenizer.add_word(word)
        self._tokenizer = tokenizer
        self._log_total = math.log(tokenizer.total)
        self._log_prob: dict[str, float] = {}

    def cut(self, text: str) -> list[str]:
        """Tokens covering the whole text (their concatenation is the text).

        jieba's dictionary segmentation without the HMM (as ``cut(HMM=False)``):
        jieba builds the word graph (``get_DAG``) and the most probable route
        through it is taken. The route is computed here rather than with
        ``Tokenizer.calc`` only to cache each word's log-probability, which
        jieba recomputes for every candidate; the result is the same.
        (Runs of Latin letters and digits are not merged into one token,
        which does not matter for keyword matching.)
        """
        n = len(text)
        if n == 0:
            return []
        tokenizer = self._tokenizer
        dag = tokenizer.get_DAG(text)
        freq = tokenizer.FREQ
        log_prob = self._log_prob
        if len(log_prob) > _LOG_CACHE_LIMIT:
            log_prob.clear()
        log_total = self._log_total
        score = [0.0] * (n + 1)
        nxt = [0] * (n + 1)
        for k in range(n - 1, -1, -1):
            best = -math.inf
            best_end = k + 1
            for last in dag[k]:
                end = last + 1
                word = text[k:end]
                lp = log_prob.get(word)
                if lp is None:
                    lp = log_prob[word] = math.log(freq.get(word) or 1) - log_total
                value = lp + score[end]
                # ties go to the longer word, as in jieba
                if value > best or (value == best and end > best_end):
                    best, best_end = value, end
            score[k] = best
            nxt[k] = best_end
        tokens = []
        x = 0
        while x < n:
            y = nxt[x]
            tokens.append(text[x:y])
            x = y
        return tokens
