"""Finding the taxonomy's words in a normalised report.

:class:`Lexicon` compiles every word list of a :class:`~nlp.taxonomy.Taxonomy`
into one index and turns a report into :class:`Hit` objects:

1. every occurrence of every word is found (overlaps included);
2. an occurrence buried inside a longer ordinary word found by the segmenter
   is dropped (响 in 影响, 锈 in 不锈钢, 流量 in 流量计);
3. negations shortly before a word mark it negated (没有漏水, 没停机), and
   words before 修好了 / 解决了 in the same clause count as fixed;
4. "A*B" patterns are assembled from their parts;
5. an occurrence strictly inside a longer matched word is dropped
   (停了 in 停了两次, 漏电 in 漏电开关, 急 in 不急).

Words are found and clauses segmented (per clause: jieba splits at
punctuation too) in one pass of the segmenter over the dictionary, which
holds every word of the lexicon.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from operator import itemgetter

from .segment import Segmenter
from .taxonomy import Taxonomy

__all__ = ["Lexicon", "Hit", "Layer"]


class Layer:
    """What a word means (the list it comes from)."""

    KEYWORD = 0
    WEAK = 1
    HINT = 2
    PREDICATE = 3
    FALLBACK = 4
    SAFETY = 5
    IMPACT = 6
    SCOPE = 7
    STOP = 8
    STOPPAGE = 9
    DEGRADED = 10
    NEUTRAL = 11
    CAN_WAIT = 12
    URGENT = 13
    FAULT = 14
    PIECE = 15
    MEASURE = 16
    RESOLVED = 17
    GREETING = 18
    NO_BACKUP = 19
    CAT_URGENT = 20  # a category's own urgency word (应急灯 for lighting)
    MINOR = 21  # a category's own "minor" word (卡纸 for office_it)


_CATEGORY_LAYERS = frozenset({Layer.KEYWORD, Layer.WEAK, Layer.HINT, Layer.MEASURE, Layer.FALLBACK})
_PRIORITY_LAYERS = frozenset({Layer.SAFETY, Layer.IMPACT, Layer.STOPPAGE, Layer.DEGRADED,
                              Layer.NEUTRAL, Layer.CAN_WAIT, Layer.URGENT, Layer.FAULT, Layer.NO_BACKUP,
                              Layer.CAT_URGENT, Layer.MINOR})
_COMBO_LAYERS = frozenset({Layer.SCOPE, Layer.STOP})
_SCOPE_SHADOWS = frozenset({Layer.IMPACT, Layer.DEGRADED, Layer.NEUTRAL}) | _COMBO_LAYERS
_SHADOWING = _CATEGORY_LAYERS | _PRIORITY_LAYERS | _COMBO_LAYERS
# one-character pattern parts and predicates count even inside a longer word (高 in 偏高)
_SHORT_OK = frozenset({Layer.PIECE, Layer.PREDICATE})
# working layers: pattern parts and 修好了-words are not handed to the classifier
_INTERNAL = frozenset({Layer.PIECE, Layer.RESOLVED})
# the layers the per-hit loops test, as plain module constants (a class attribute costs a second lookup)
_PIECE = Layer.PIECE
_PREDICATE = Layer.PREDICATE
_RESOLVED = Layer.RESOLVED

CLAUSE_BREAKS = ",.!?;:，。！？；：、\n\r~…()[]【】（）「」\"'"
_CLAUSE_RE = re.compile("[" + re.escape(CLAUSE_BREAKS) + "]")
_BREAK_CHARS = frozenset(CLAUSE_BREAKS)
_CLAUSE_RUN_RE = re.compile("[" + re.escape(CLAUSE_BREAKS) + "]+")
_MAX_WORDS = 200  # word occurrences looked at per report
_WORD = itemgetter(2)  # the word of a (start, end, word) occurrence
_CODE_RE = re.compile(r"(?<![a-z0-9])[a-z]{1,5}[-.]?\d{1,6}")


@dataclass(slots=True)
class Hit:
    start: int
    end: int
    layer: int
    category: str | None
    negated: bool = False
    neg_start: int = -1
    suppressed: bool = False
    # for pattern parts: (pattern index, part index); for predicates: None
    ref: tuple[int, int] | None = None

    def text(self, source: str) -> str:
        return source[self.start:self.end]


@dataclass(frozen=True, slots=True)
class _Pattern:
    layer: int
    category: str | None
    parts: tuple[str, ...]


class Lexicon:
    def __init__(self, taxonomy: Taxonomy) -> None:
        self.taxonomy = taxonomy
        self.pattern_gap = taxonomy.settings.pattern_gap
        self.hint_gap = taxonomy.settings.hint_gap
        self.window = taxonomy.settings.negation_window
        g = taxonomy.grammar
        self.negations = frozenset(g.negations)
        self._negations_longest = tuple(sorted(g.negations, key=len, reverse=True))
        # a regex class (one table test per character, quicker than testing the text against a set)
        firsts = "".join(re.escape(ch) for ch in sorted({w[0] for w in g.negations}))
        self._negation_first_re = re.compile(f"[{firsts}]" if firsts else "(?!)")
        self._negation_lasts = frozenset(w[-1] for w in g.negations)
        self.negation_stops = frozenset(g.negation_stops)
        self.hint_stops = tuple(g.hint_stops)
        self._particles = frozenset(g.particles)
        self._complements = frozenset(g.complements)

        index: dict[str, list[tuple[int, str | None, tuple[int, int] | None]]] = {}
        patterns: list[_Pattern] = []

        def add(word: str, layer: int, category: str | None) -> None:
            if "*" in word:
                parts = tuple(word.split("*"))
                pid = len(patterns)
                patterns.append(_Pattern(layer, category, parts))
                for k, part in enumerate(parts):
                    index.setdefault(part, []).append((Layer.PIECE, category, (pid, k)))
            else:
                index.setdefault(word, []).append((layer, category, None))

        for cat in taxonomy.categories.values():
            main_layer = Layer.FALLBACK if cat.kind == "fallback" else Layer.KEYWORD
            for w in cat.keywords:
                add(w, main_layer, cat.id)
            for w in cat.weak_keywords:
                add(w, Layer.WEAK, cat.id)
            for w in cat.hints:
                add(w, Layer.HINT, cat.id)
            for w in cat.hint_predicates:
                add(w, Layer.PREDICATE, cat.id)
            for w in cat.measures:
                add(w, Layer.MEASURE, cat.id)
            for w in cat.urgent_words:
                add(w, Layer.CAT_URGENT, cat.id)
            for w in cat.minor_words:
                add(w, Layer.MINOR, cat.id)
        for w in g.fault_predicates:
            add(w, Layer.PREDICATE, None)
        for w in g.resolved:
            add(w, Layer.RESOLVED, None)
        for w in g.greetings:
            add(w, Layer.GREETING, None)
        p = taxonomy.priority
        for words, layer in ((p.safety, Layer.SAFETY), (p.impact, Layer.IMPACT),
                             (p.impact_scopes, Layer.SCOPE), (p.impact_stops, Layer.STOP),
                             (p.stoppage, Layer.STOPPAGE), (p.degraded, Layer.DEGRADED),
                             (p.neutral, Layer.NEUTRAL), (p.can_wait, Layer.CAN_WAIT),
                             (p.urgent, Layer.URGENT), (p.fault_words, Layer.FAULT),
                             (p.no_backup, Layer.NO_BACKUP)):
            for w in words:
                add(w, layer, None)

        self._request_words = frozenset(c.id for c in taxonomy.categories.values()
                                        if c.kind in ("request", "fallback"))
        self._index = {w: tuple(entries) for w, entries in index.items()}
        # a word's entries without its pattern parts, for when no pattern it is a part of can complete
        self._plain = {w: tuple(e for e in entries if e[0] != Layer.PIECE) for w, entries in index.items()}
        self._has_pieces = frozenset(w for w, entries in index.items() if any(e[0] == Layer.PIECE for e in entries))
        self._layers = {w: frozenset(layer for layer, _, _ in entries) for w, entries in index.items()}
        # words that are only predicates or pattern parts, and the patterns each word starts
        self._auxiliary = frozenset(w for w, ls in self._layers.items() if ls <= _SHORT_OK)
        # what makes an auxiliary word wanted: being a predicate (after a hint), or the patterns it is a part of
        self._aux_predicates = frozenset(w for w in self._auxiliary if Layer.PREDICATE in self._layers[w])
        self._aux_patterns = {w: frozenset(ref[0] for layer, _, ref in index[w] if layer == Layer.PIECE and ref)
                              for w in self._auxiliary}
        pattern_heads: dict[str, list[int]] = {}
        for pid, pattern in enumerate(patterns):
            pattern_heads.setdefault(pattern.parts[0], []).append(pid)
        self._pattern_heads = {w: tuple(pids) for w, pids in pattern_heads.items()}
        self._head_words = frozenset(pattern_heads)
        self._patterns = tuple(patterns)
        # the words a pattern needs: its parts are looked at only when all of them occur
        self._pattern_words = tuple(frozenset(pattern.parts) for pattern in patterns)
        self._hint_words = frozenset(w for w, ls in self._layers.items() if Layer.HINT in ls or Layer.MEASURE in ls)
        # the words that can make a 修好了 hit: resolved words, and the parts of resolved patterns
        self._resolved_words = frozenset(w for w, ls in self._layers.items() if Layer.RESOLVED in ls) | frozenset(
            part for pattern in patterns if pattern.layer == Layer.RESOLVED for part in pattern.parts)
        # the segmenter's pass finds the words within a clause; a word with punctuation in it
        # (a deployment's own taxonomy may have one) is looked for on its own
        self._break_words = tuple(sorted(w for w in self._index if not _BREAK_CHARS.isdisjoint(w)))
        self._words = frozenset(self._index).difference(self._break_words)
        # every word the lexicon finds anchors the dictionary: words containing one (影响 for 响) are kept
        self.segmenter = Segmenter(taxonomy.all_words(), anchors=self._index)
        # each word the segmenter's pass is to find must be a dictionary word
        unknown = sorted(w for w in self._words if not self.segmenter.is_word(w))
        if unknown:  # pragma: no cover - the dictionary is built from the taxonomy's words
            raise RuntimeError(f"words missing from the segmenter's dictionary: {unknown[:5]}")

    # ------------------------------------------------------------------

    def hits(self, text: str) -> list[Hit]:
        """All live (not suppressed) hits in the match form of a report, in text order."""
        # one pass finds every word and segments every clause (the segmentation is used around words)
        nxt, raw = self.segmenter.scan(text, _BREAK_CHARS, self._words)
        for word in self._break_words:
            at = text.find(word)
            while at >= 0:
                raw.append((at, at + len(word), word))
                at = text.find(word, at + 1)
        if not raw:
            return []
        raw.sort()
        if len(raw) > _MAX_WORDS:
            raw = raw[:_MAX_WORDS]  # a guard against pathological input (漏漏漏...): the start decides
        index = self._index
        # predicates matter only after a hint; pattern parts only when every part of the pattern occurs
        words = set(map(_WORD, raw))
        has_hint = not self._hint_words.isdisjoint(words)
        heads = self._pattern_heads
        pattern_words = self._pattern_words
        started = {pid for w in words & self._head_words for pid in heads[w] if pattern_words[pid] <= words}
        auxiliary = self._auxiliary
        if not auxiliary.isdisjoint(words):
            # an auxiliary word is kept as a predicate after a hint, or as a part of a pattern that can complete
            predicates = self._aux_predicates if has_hint else frozenset()
            patterns = self._aux_patterns
            raw = [r for r in raw if r[2] not in auxiliary or r[2] in predicates
                   or (started and not patterns[r[2]].isdisjoint(started))]
        if not raw:
            return []
        breaks = [m.start() for m in _CLAUSE_RE.finditer(text)]
        clauses: dict[int, tuple[int, list[int], list[str]]] = {}
        may_negate = self._negation_first_re.search(text) is not None
        plain = self._plain
        has_pieces = self._has_pieces
        hits: list[Hit] = []
        for s, e, word in raw:
            # segment the clause around the word (once per clause)
            c = bisect_right(breaks, s)
            seg = clauses.get(c)
            if seg is None:
                seg = clauses[c] = self._clause_tokens(text, nxt, breaks, c)
            cs, starts, tokens = seg
            t = bisect_right(starts, s) - 1
            ts, te = starts[t], starts[t + 1]
            inside = e <= te and (ts != s or te != e) and tokens[t] not in index
            if inside:
                token = tokens[t]
                if ts == s and token[e - s:] in self._particles:
                    inside = False  # the word plus a particle (锈了)
                elif te == e and (e - s > 1 or Layer.HINT in self._layers[word]):
                    inside = False  # the head of a compound names the same thing (总开关, 补水阀)
            neg_start = -1
            if may_negate:
                if ts < s and (e == te or not inside):
                    # the token's head may end with a negation (不|漏水 in 不漏水; not 不锈钢)
                    neg_start = self._negation_suffix(text[ts:s], s)
                if neg_start < 0:
                    neg_start = self._negation_before(t, tokens, starts)
            negated = neg_start >= 0
            for layer, category, ref in (index[word] if started and word in has_pieces else plain[word]):
                if inside and neg_start < ts and not (e - s == 1 and layer in _SHORT_OK):
                    continue  # part of an ordinary longer word (响 in 影响, 锈 in 不锈钢)
                if (layer == _PREDICATE and not has_hint) or (
                        layer == _PIECE and ref is not None and ref[0] not in started):
                    continue
                hits.append(Hit(s, e, layer, category, negated, neg_start, False, ref))

        if started:  # pattern parts are kept only for patterns that can complete
            hits.extend(self._assemble(hits, text))
        self._suppress_contained(hits)
        if not self._resolved_words.isdisjoint(words):
            self._apply_resolved(hits, text)
        return [h for h in hits if not h.suppressed and h.layer not in _INTERNAL]

    @staticmethod
    def _apply_resolved(hits: list[Hit], text: str) -> None:
        """Words before 修好了 / 解决了 in the same clause describe a fixed problem: they do not count."""
        done = [h for h in hits if h.layer == _RESOLVED and not h.negated]
        for r in done:
            for h in hits:
                if h.end <= r.start and not h.negated and _CLAUSE_RE.search(text, h.end, r.start) is None:
                    h.negated = True

    @staticmethod
    def _clause_tokens(text: str, nxt: list[int], breaks: list[int], c: int) -> tuple[int, list[int], list[str]]:
        """Tokens of clause c (between punctuation marks) with their start offsets (plus the end)."""
        cs = breaks[c - 1] + 1 if c > 0 else 0
        ce = breaks[c] if c < len(breaks) else len(text)
        starts = [cs]
        tokens = []
        x = cs
        while x < ce:
            y = nxt[x]
            tokens.append(text[x:y])
            starts.append(y)
            x = y
        if not tokens:  # a word on a punctuation mark itself: one token of its own
            tokens = [text[cs:cs + 1]]
            starts = [cs, cs + 1]
        return cs, starts, tokens

    # negation ---------------------------------------------------------

    def _negation_suffix(self, prefix: str, s: int) -> int:
        """Start of a negation ending right before s inside the same token (不|漏水)."""
        if not prefix or prefix[-1] not in self._negation_lasts:
            return -1
        for neg in self._negations_longest:
            if prefix.endswith(neg):
                return s - len(neg)
        return -1

    def _negation_before(self, t: int, tokens: list[str], starts: list[int]) -> int:
        """Start of a negation among the few tokens before token t in the same clause, else -1."""
        count = 0
        k = t - 1
        while k >= 0 and count < self.window:
            tok = tokens[k]
            if tok.isspace():
                k -= 1
                continue
            if tok in self.negations:
                if tok == "不" and self._is_complement(tokens, k):
                    return -1  # 排不出去: a verb complement, not a negation
                return starts[k]
            if tok in self.negation_stops or (len(tok) == 1 and tok in CLAUSE_BREAKS):
                return -1
            count += 1
            k -= 1
        return -1

    def _is_complement(self, tokens: list[str], k: int) -> bool:
        """True for 不 between a verb and a result complement (排|不|出去, 抽|不|上来)."""
        if k == 0 or k + 1 >= len(tokens):
            return False
        before, after = tokens[k - 1], tokens[k + 1]
        return bool(before) and "\u4e00" <= before[-1] <= "\u9fff" and after[:1] in self._complements

    # patterns ---------------------------------------------------------

    def _assemble(self, hits: list[Hit], text: str) -> list[Hit]:
        parts: dict[tuple[int, int], list[Hit]] = {}
        for h in hits:
            if h.layer == _PIECE and h.ref is not None:
                parts.setdefault(h.ref, []).append(h)
        words: list[Hit] | None = None
        out: list[Hit] = []
        gap = self.pattern_gap
        for (pid, k), heads in parts.items():
            if k != 0:
                continue
            pattern = self._patterns[pid]
            if any((pid, m) not in parts for m in range(1, len(pattern.parts))):
                continue  # a part is missing: no need to look closer
            if words is None:
                words = [h for h in hits if h.layer in _SHADOWING]
            for head in heads:
                if any(w.start <= head.start and head.end <= w.end and w.end - w.start > head.end - head.start
                       for w in words):
                    continue  # a pattern does not start inside a longer word (温度 in 温度传感器)
                end = head.end
                ok = True
                for m in range(1, len(pattern.parts)):
                    nxt = None
                    for cand in parts.get((pid, m), ()):
                        if end <= cand.start <= end + gap and not _CLAUSE_RE.search(text, end, cand.start):
                            if nxt is None or cand.start < nxt.start:
                                nxt = cand
                    if nxt is None:
                        ok = False
                        break
                    end = nxt.end
                if ok:
                    out.append(Hit(head.start, end, pattern.layer, pattern.category,
                                   negated=head.negated, neg_start=head.neg_start))
        return out

    # containment --------------------------------------------------------

    def _suppress_contained(self, hits: list[Hit]) -> None:
        """Drop a word strictly inside a longer matched word of the same kind.

        Category words shadow category words (漏电 in 漏电开关), priority words
        shadow priority words (停了 in 停了两次, 急 in 不急); scope and stop
        words are shadowed by priority words and each other (停 in 停产).
        The two kinds never shadow each other: 氨气 stays a hazard inside 氨气泄漏.
        """
        live = [h for h in hits if h.layer in _SHADOWING]
        if not live:
            return
        # a predicate inside a request or greeting word is not one (报 in 报价)
        requests = self._request_words
        request_words = [g for g in live if g.category in requests and g.layer in _CATEGORY_LAYERS]
        if request_words:
            for h in hits:
                if h.layer == _PREDICATE:
                    for g in request_words:
                        if g.start <= h.start and h.end <= g.end and g.end - g.start > h.end - h.start:
                            h.suppressed = True
                            break
        # only a span with a longer live span around it can be shadowed: in (start, -end) order,
        # that is a span ending no later than some span before it
        covered = set()
        reach = -1
        for start, neg_end in sorted({(h.start, -h.end) for h in live}):
            if -neg_end <= reach:
                covered.add((start, -neg_end))
            else:
                reach = -neg_end
        if not covered:
            return
        for h in live:
            if (h.start, h.end) not in covered:
                continue
            combo = False
            if h.layer in _CATEGORY_LAYERS:
                shadows = _CATEGORY_LAYERS
            elif h.layer in _PRIORITY_LAYERS:
                shadows = _PRIORITY_LAYERS
            else:
                shadows = _SCOPE_SHADOWS
                combo = True
            for g in live:
                if g is h or g.end - g.start <= h.end - h.start:
                    continue
                if g.start <= h.start and h.end <= g.end:
                    if g.layer in shadows or (
                            # a stop word in the middle of a symptom is not one (动不了 in 启动不了),
                            # at its start it still is (没法 in 没法启动)
                            combo and g.layer in _CATEGORY_LAYERS and g.start < h.start):
                        h.suppressed = True
                        break

    # helpers for the classifier ----------------------------------------

    @staticmethod
    def same_clause(text: str, a: int, b: int) -> bool:
        return a >= b or _CLAUSE_RE.search(text, a, b) is None

    @staticmethod
    def clause_breaks(text: str, a: int, b: int) -> int:
        """How many clause boundaries (punctuation runs) lie between a and b."""
        if a >= b:
            return 0
        return len(_CLAUSE_RUN_RE.findall(text, a, b))

    def code_after(self, text: str, pos: int) -> int:
        """End of an error-code-like token starting within hint_gap characters after pos, else -1."""
        m = _CODE_RE.search(text, pos, min(len(text), pos + self.hint_gap + 12))
        if m and m.start() - pos <= self.hint_gap and self.same_clause(text, pos, m.start()):
            return m.end()
        return -1
