"""Fault-report classifier: category, priority, evidence and entities.

The rules are those of docs/TAXONOMY.md; the words they use come from the
taxonomy file (nlp/data/taxonomy.toml by default).

Category
    A category named in ``settings.precedence`` (smoke_fire > electric_leak >
    gas_leak) wins when one of its strong words is present. Otherwise the
    strongest kind of evidence wins -- a strong keyword or a hint with a
    predicate (轴承 + 温度高), then a request (报价, 安装), then a weak keyword,
    then a lone hint -- and among equals the symptom mentioned first. An
    error code with no other symptom is a weak sign of ``settings.code_category``
    (报E03 -> inverter_alarm). A device named only in a non-fault errand
    (说明书, 发票) is not a fault, nor is an errand the customer leads with
    when only weak signs follow it (合同什么时候寄过来). Nothing found: the fallback category (other).

Priority
    safety hazard -> P0 (whatever else is said); stoppage of a line / site /
    service -> P0; equipment stopped (停机了) -> P0 unless it still runs or
    has a backup (not for requests: 停机保养); urgency raises a category with ``urgent_priority``
    (急着试机 -> P1); "can wait" lowers P1 to P2; otherwise the category's
    default. A fallback report that says something is broken is P1.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from .entities import EntityExtractor
from .lexicon import Hit, Layer, Lexicon
from .normalize import Normalizer, has_traditional
from .taxonomy import Category, Taxonomy, load_taxonomy

__all__ = ["Classifier", "Classification"]

_log = logging.getLogger(__name__)

# evidence labels shown to users
_LABEL_SAFETY = "安全"
_LABEL_IMPACT = "影响"
_LABEL_STOPPAGE = "停机"
_LABEL_DEGRADED = "降级"
_LABEL_CAN_WAIT = "可缓"
_LABEL_URGENT = "紧急"
_LABEL_NEGATED = "否定"
_LABEL_KEYWORD = "症状"
_LABEL_PART = "部件"
_LABEL_REQUEST = "诉求"
_LABEL_HINT = "设备"
_LABEL_OTHER = "其他"
_LABEL_FAULT = "故障"
_LABEL_CODE = "代码"

_MAX_EVIDENCE = 12
_PRIORITY_RANK = {"P0": 0, "P1": 1, "P2": 2}

# evidence tiers for choosing the category
_TIER_STRONG = 3
_TIER_REQUEST = 2
_TIER_WEAK = 1
_TIER_HINT = 0
_TIER_SCORE = {_TIER_STRONG: 0.9, _TIER_REQUEST: 0.8, _TIER_WEAK: 0.6, _TIER_HINT: 0.45}
_NOT_REPORTED_NEGATED = frozenset({Layer.PREDICATE, Layer.SCOPE, Layer.STOP})


@dataclass(frozen=True)
class Classification:
    category: str
    category_name: str
    priority: str
    score: float
    evidence: tuple[str, ...] = ()
    impact: str | None = None
    serial: str | None = None
    location: str | None = None
    error_code: str | None = None
    phone: str | None = None
    # a fault, safety, request or place signal: the text is a report however short (电梯困人了),
    # not chat (在吗, 好的谢谢)
    signal: bool = False

    def as_dict(self, explain: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "category": self.category,
            "priority": self.priority,
            "serial": self.serial,
            "location": self.location,
            "error_code": self.error_code,
            "phone": self.phone,
        }
        if explain:
            out["category_name"] = self.category_name
            out["score"] = self.score
            out["evidence"] = list(self.evidence)
            out["impact"] = self.impact
        return out


class Classifier:
    """Classifies one report at a time; build once, reuse (thread-safe for reading)."""

    _default: "Classifier | None" = None
    _default_lock = threading.Lock()

    def __init__(self, taxonomy: Taxonomy) -> None:
        self.taxonomy = taxonomy
        self._normalize = Normalizer(taxonomy.typos, taxonomy.english, taxonomy.settings.max_chars)
        self._lexicon = Lexicon(taxonomy)
        self._entities = EntityExtractor(taxonomy.entities)
        self._order = {cid: i for i, cid in enumerate(taxonomy.categories)}
        self._precedence = taxonomy.settings.precedence
        self._safety_categories = frozenset(c.id for c in taxonomy.categories.values() if c.safety)
        self._requests = frozenset(c.id for c in taxonomy.categories.values() if c.kind == "request")
        self._absorbing = {c.id: frozenset(c.absorbs) for c in taxonomy.categories.values() if c.absorbs}
        self._absorb_window = 3 * taxonomy.settings.hint_gap
        fallback = taxonomy.fallback
        self._empty = Classification(category=fallback.id, category_name=fallback.name,
                                     priority=fallback.priority, score=0.0)

    # construction ---------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "Classifier":
        """A classifier for a deployment's own taxonomy file (raises TaxonomyError)."""
        return cls(load_taxonomy(path))

    @classmethod
    def default(cls) -> "Classifier":
        """The process-wide classifier built from the packaged taxonomy."""
        if cls._default is None:
            with cls._default_lock:
                if cls._default is None:
                    cls._default = cls(load_taxonomy())
        return cls._default

    # classification -------------------------------------------------------

    def classify(self, text: str, explain: bool = True) -> Classification:
        """Classify one report. Never raises: unusable input gives the fallback category.

        With explain=False the explanation (evidence and impact) is not worked
        out and left empty; every other field is the same. For callers that
        only need the labels and entities, such as the command line without
        --explain.
        """
        if not isinstance(text, str):
            text = "" if text is None else str(text)
        try:
            return self._classify(text, explain)
        except Exception:  # pragma: no cover - defensive: a report must never break the bot
            _log.exception("classifier failed on a report of %d characters", len(text))
            return self._empty

    def _classify(self, text: str, explain: bool = True) -> Classification:
        display, match = self._normalize(text)
        if not match:
            return self._empty
        entities = self._entities.extract(display)
        if entities.location is not None and has_traditional(text):
            # a place is given as written: traditional characters stay (一樓大堂)
            written = self._normalize.as_written(text, display, entities.location)
            if written != entities.location:
                entities = entities._replace(location=written)
        hits = self._lexicon.hits(match)
        if not hits and entities.error_code is None:
            fb = self.taxonomy.fallback
            return Classification(
                category=fb.id, category_name=fb.name, priority=fb.priority, score=0.2,
                serial=entities.serial, location=entities.location,
                error_code=entities.error_code, phone=entities.phone,
                signal=entities.location is not None or entities.serial is not None,
            )

        category, cat_score, cat_evidence = self._choose_category(hits, match, entities.error_code is not None)
        cat = self.taxonomy.categories[category]
        evidence: list[str] | None = None
        if explain:
            evidence = []
            if cat_evidence:
                evidence.append(cat_evidence)
            if entities.error_code is not None:
                evidence.append(f"{_LABEL_CODE}:{entities.error_code}")
        priority, impact = self._priority(cat, hits, match, evidence)
        if evidence is not None:
            if impact is not None:
                impact = self._normalize.clause_of(text, impact) or impact
            for h in hits:
                if h.negated and h.neg_start >= 0 and h.layer not in _NOT_REPORTED_NEGATED:
                    evidence.append(f"{_LABEL_NEGATED}:{match[h.neg_start:h.end]}")

        return Classification(
            category=category,
            category_name=cat.name,
            priority=priority,
            score=cat_score,
            evidence=() if evidence is None else _dedupe(evidence)[:_MAX_EVIDENCE],
            impact=impact,
            serial=entities.serial,
            location=entities.location,
            error_code=entities.error_code,
            phone=entities.phone,
            signal=(category != self.taxonomy.settings.fallback or priority != cat.priority
                    or entities.location is not None or entities.serial is not None
                    or entities.error_code is not None),
        )

    # category -------------------------------------------------------------

    def _choose_category(self, hits: list[Hit], text: str, has_code: bool = False) -> tuple[str, float, str | None]:
        """(category id, score, evidence) following the precedence and lead-symptom rules."""
        order = self._order
        requests = self._requests
        # category -> (tier, -start, length, -order, start, end, label); larger is better
        best: dict[str, tuple[int, int, int, int, int, int, str]] = {}
        predicates: list[Hit] | None = None
        hints: list[Hit] = []
        fallback_hit: Hit | None = None
        for h in hits:
            if h.negated or h.category is None:
                continue
            layer = h.layer
            if layer == Layer.KEYWORD:
                if h.category in requests:
                    tier, end, label = _TIER_REQUEST, h.end, _LABEL_REQUEST
                else:
                    tier, end, label = _TIER_STRONG, h.end, _LABEL_KEYWORD
            elif layer == Layer.WEAK:
                tier, end, label = _TIER_WEAK, h.end, _LABEL_KEYWORD
            elif layer == Layer.HINT or layer == Layer.MEASURE:
                if predicates is None:
                    # a hint is completed by a predicate, or by a weak keyword of its own category (阀门 + 卡住)
                    predicates = [p for p in hits if not p.negated and (
                        p.layer == Layer.PREDICATE or (p.layer == Layer.WEAK and p.category is not None))]
                    hints = [p for p in hits if p.layer in (Layer.HINT, Layer.MEASURE)
                             or (p.layer == Layer.KEYWORD and not p.negated)]
                measure = layer == Layer.MEASURE
                end = self._predicate_after(h, predicates, hints, text, own_only=measure)
                if end > 0:
                    tier, label = _TIER_STRONG, _LABEL_PART
                elif measure:
                    continue  # a quantity alone (压力正常) says nothing
                else:
                    tier, end, label = _TIER_HINT, h.end, _LABEL_HINT
            else:
                if layer == Layer.FALLBACK and fallback_hit is None:
                    fallback_hit = h
                continue
            cand = (tier, -h.start, end - h.start, -order[h.category], h.start, end, label)
            cur = best.get(h.category)
            if cur is None or cand[:4] > cur[:4]:
                best[h.category] = cand

        if self._absorbing:
            self._absorb(hits, text, best, order)

        code_category = self.taxonomy.settings.code_category
        if has_code and code_category is not None and code_category not in best:
            # an error code with no other symptom: a weak sign of its category (报E03)
            best[code_category] = (_TIER_WEAK, -len(text), 0, -order[code_category], 0, 0, _LABEL_CODE)

        if not best:
            fb = self.taxonomy.fallback
            if fallback_hit is not None:
                return fb.id, 0.5, f"{_LABEL_OTHER}:{fallback_hit.text(text)}"
            greeting = next((h for h in hits if h.layer == Layer.GREETING), None)
            if greeting is not None:
                return fb.id, 0.5, f"{_LABEL_OTHER}:{greeting.text(text)}"
            return fb.id, 0.2, None

        if fallback_hit is not None and (
                all(c[0] == _TIER_HINT for c in best.values())
                or all(c[0] <= _TIER_WEAK and c[4] > fallback_hit.start for c in best.values())):
            # a device named in a greeting or an errand is not a fault report (说明书, 谢谢);
            # nor is an errand the customer leads with that only has weak signs after it (合同寄过来)
            fb = self.taxonomy.fallback
            return fb.id, 0.5, f"{_LABEL_OTHER}:{fallback_hit.text(text)}"

        for cat_id in self._precedence:
            cand = best.get(cat_id)
            if cand is not None and cand[0] == _TIER_STRONG:
                return cat_id, 0.95, f"{cand[6]}:{text[cand[4]:cand[5]]}"

        if len(best) == 1:  # the usual case: one category has evidence
            winner_id, winner = next(iter(best.items()))
            rivals = 0
        else:
            winner_id = max(best, key=lambda cid: best[cid][:4])
            winner = best[winner_id]
            rivals = sum(1 for c in best.values() if c[0] == winner[0]) - 1
        score = max(0.3, _TIER_SCORE[winner[0]] - 0.1 * min(rivals, 2))
        if winner[6] == _LABEL_CODE:
            return winner_id, round(score, 2), None
        return winner_id, round(score, 2), f"{winner[6]}:{text[winner[4]:winner[5]]}"

    def _absorb(self, hits: list[Hit], text: str,
                best: dict[str, tuple[int, int, int, int, int, int, str]], order: dict[str, int]) -> None:
        """A symptom said of an equipment category's device belongs to that category.

        电梯运行的时候咯噔咯噔响 is elevator, not noise: the hint (电梯) followed in the
        same clause by a keyword of a category the device category absorbs turns
        into a strong sign of the device category, and the absorbed symptom no
        longer competes.
        """
        window = self._absorb_window
        for h in hits:
            if h.layer != Layer.HINT or h.negated or h.category not in self._absorbing:
                continue
            absorbs = self._absorbing[h.category]
            taken: list[Hit] = [
                k for k in hits
                if not k.negated and k.category in absorbs and k.layer in (Layer.KEYWORD, Layer.WEAK)
                and h.end <= k.start <= h.end + window and self._lexicon.same_clause(text, h.end, k.start)]
            if not taken:
                continue
            end = max(k.end for k in taken)
            cand = (_TIER_STRONG, -h.start, end - h.start, -order[h.category], h.start, end, _LABEL_PART)
            cur = best.get(h.category)
            if cur is None or cand[:4] > cur[:4]:
                best[h.category] = cand
            for k in taken:
                cur = best.get(k.category)
                if cur is not None and cur[4] >= h.end:
                    del best[k.category]

    def _predicate_after(self, hint: Hit, predicates: list[Hit], hints: list[Hit], text: str,
                         own_only: bool = False) -> int:
        """End of a predicate closely following a hint (its category's or a generic one), else 0.

        With own_only (quantities such as 压力), only the category's own predicates count.
        """
        lexicon = self._lexicon
        gap = lexicon.hint_gap
        best: Hit | None = None
        for p in predicates:
            own = p.category == hint.category
            if not own and (own_only or p.category is not None):
                continue
            if p.start < hint.end or (best is not None and p.start >= best.start):
                continue
            if any(other is not hint and hint.end <= other.start < p.start for other in hints):
                continue  # a nearer device name or symptom takes the predicate (电机轴承该换了, 电机过热报警)
            if p.start > hint.end:
                between = text[hint.end:p.start]
                if any(stop in between for stop in lexicon.hint_stops):
                    continue
                breaks = lexicon.clause_breaks(text, hint.end, p.start)
                if breaks == 0:
                    if p.start - hint.end > gap:
                        continue
                elif not (own and not own_only and breaks == 1 and p.start - hint.end <= 3 * gap):
                    # only the hint's own predicates reach into the next clause (那个轴承,用了一个月又响了)
                    continue
            best = p
        if best is not None:
            return best.end
        if own_only:
            return 0
        code_end = lexicon.code_after(text, hint.end)
        if code_end > 0 and not any(stop in text[hint.end:code_end] for stop in lexicon.hint_stops):
            return code_end
        return 0

    # priority -------------------------------------------------------------

    def _priority(self, cat: Category, hits: list[Hit], text: str,
                  evidence: list[str] | None) -> tuple[str, str | None]:
        """(priority, impact phrase). Without `evidence` (a list that receives the reasons)
        the reasons and the impact phrase are not worked out (None)."""
        safety: list[Hit] = []
        impact: list[Hit] = []
        stoppage: list[Hit] = []
        degraded: list[Hit] = []
        can_wait: list[Hit] = []
        urgent: list[Hit] = []
        fault: list[Hit] = []
        has_scope = False
        minor: list[Hit] = []
        buckets = {Layer.SAFETY: safety, Layer.IMPACT: impact, Layer.STOPPAGE: stoppage,
                   Layer.DEGRADED: degraded, Layer.CAN_WAIT: can_wait, Layer.URGENT: urgent,
                   Layer.FAULT: fault, Layer.NO_BACKUP: stoppage}
        if not cat.stoppage:
            del buckets[Layer.STOPPAGE]  # one lift stopping is not the business stopping
        safety_categories = self._safety_categories
        for h in hits:
            if h.negated:
                continue
            bucket = buckets.get(h.layer)
            if bucket is not None:
                bucket.append(h)
            elif h.category == cat.id and h.layer == Layer.CAT_URGENT:
                urgent.append(h)
            elif h.category == cat.id and h.layer == Layer.MINOR:
                minor.append(h)
            elif h.layer == Layer.SCOPE:
                has_scope = True
            elif h.category in safety_categories and h.layer in (Layer.KEYWORD, Layer.WEAK):
                safety.append(h)
        gaps: dict[tuple[int, int], tuple[int, int]] = {}
        if has_scope:
            impact.extend(self._scoped_stops(hits, text, gaps))
            impact.sort(key=lambda h: h.start)

        counts_stoppage = bool(stoppage) and not degraded and cat.kind != "request"
        if evidence is None:
            if safety or impact or counts_stoppage:
                return "P0", None
        else:
            for h in safety:
                evidence.append(f"{_LABEL_SAFETY}:{h.text(text)}")
            for h in impact:
                evidence.append(f"{_LABEL_IMPACT}:{_impact_text(h, text, gaps)}")
            if counts_stoppage:
                for h in stoppage:
                    evidence.append(f"{_LABEL_STOPPAGE}:{h.text(text)}")
            for h in degraded:
                evidence.append(f"{_LABEL_DEGRADED}:{h.text(text)}")
            for h in can_wait:
                evidence.append(f"{_LABEL_CAN_WAIT}:{h.text(text)}")
            if cat.urgent_priority is not None:
                for h in urgent:
                    evidence.append(f"{_LABEL_URGENT}:{h.text(text)}")

        if safety or impact or counts_stoppage:
            phrase = self._impact_phrase(impact[0], hits, text) if impact else (
                stoppage[0].text(text) if counts_stoppage else None)
            return "P0", phrase

        priority = cat.priority
        if cat.kind == "fallback" and (fault or stoppage):
            # something is broken or stopped, but it names no category: a fault all the same
            if evidence is not None:
                evidence.append(f"{_LABEL_FAULT}:{(fault or stoppage)[0].text(text)}")
            priority = "P1"
        if priority == "P1" and (can_wait or minor):
            if minor and evidence is not None:
                evidence.append(f"{_LABEL_CAN_WAIT}:{minor[0].text(text)}")
            priority = "P2"
        if cat.urgent_priority is not None and urgent:
            # said to be pressing: that outweighs a date it can wait until (月底前要投产,挺急的)
            priority = _higher(priority, cat.urgent_priority)
        return priority, None

    def _impact_phrase(self, h: Hit, hits: list[Hit], text: str) -> str:
        """The impact with the scope word right before it and its particle: 整条线 + 都停了 + (了)."""
        start, end = h.start, h.end
        gap = self._lexicon.pattern_gap
        for sc in hits:
            if (sc.layer == Layer.SCOPE and not sc.negated and sc.end <= start and start - sc.end <= gap
                    and self._lexicon.same_clause(text, sc.end, start)):
                start = min(start, sc.start)
        while end < len(text) and text[end] in _TRAILING_PARTICLES:
            end += 1
        return text[start:end]

    def _scoped_stops(self, hits: list[Hit], text: str,
                      gaps: dict[tuple[int, int], tuple[int, int]]) -> list[Hit]:
        """A scope word followed closely by a stop word in the same clause: 整条线都停了.

        `gaps` receives, per hit, where its scope ends and its stop word starts.
        """
        scopes = [h for h in hits if h.layer == Layer.SCOPE and not h.negated]
        stops = [h for h in hits if h.layer == Layer.STOP and not h.negated]
        if not stops:
            return []
        gap = self._lexicon.pattern_gap
        found: list[Hit] = []
        for sc in scopes:
            for st in stops:
                if sc.end <= st.start <= sc.end + gap and self._lexicon.same_clause(text, sc.end, st.start):
                    found.append(Hit(sc.start, st.end, Layer.IMPACT, None))
                    # where the scope ends and the stop word starts, so the phrase can read "线…停"
                    gaps[(sc.start, st.end)] = (sc.end, st.start)
                    break
        # keep the widest reading of overlapping matches (整条线都停了, not 线都停了)
        found.sort(key=lambda h: (h.start, -(h.end - h.start)))
        merged: list[Hit] = []
        for h in found:
            if merged and h.start < merged[-1].end:
                continue
            merged.append(h)
        return merged


_TRAILING_PARTICLES = "了着啦"
_IMPACT_GAP_SHOWN = 2  # 整条线都停了 reads whole; a longer gap is elided


def _impact_text(h: Hit, text: str, gaps: dict[tuple[int, int], tuple[int, int]]) -> str:
    """A scope-and-stop impact as people would say it: 整条线都停了, or 线…停 across other words."""
    gap = gaps.get((h.start, h.end))
    if gap is not None and gap[1] - gap[0] > _IMPACT_GAP_SHOWN:
        return f"{text[h.start:gap[0]]}…{text[gap[1]:h.end]}"
    return h.text(text)


def _higher(a: str, b: str) -> str:
    return a if _PRIORITY_RANK[a] <= _PRIORITY_RANK[b] else b


def _dedupe(items: list[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return tuple(out)
