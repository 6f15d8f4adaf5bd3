"""Classifications pinned, and the one-pass word finding and segmentation checked against plain references.

tests/data/classifier-pinned.jsonl holds, for the two dev sets, the noisy set
and 600 chat-style variants of the dev reports (greetings, fillers, phone
numbers, emoji), every field of each classification (category, priority,
entities, category name, score, evidence, impact, signal). Work on the
classifier's speed must leave every one of them unchanged; a deliberate change
of behaviour rewrites the file with

    python tests/test_nlp_pinned.py --write

and the diff shows what changed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nlp import Classifier  # noqa: E402
from nlp.lexicon import CLAUSE_BREAKS  # noqa: E402

PINNED = ROOT / "tests" / "data" / "classifier-pinned.jsonl"


def _record(clf: Classifier, text: str) -> dict:
    result = clf.classify(text)
    return {**result.as_dict(explain=True), "signal": result.signal}


def _pinned() -> list[dict]:
    with open(PINNED, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def clf() -> Classifier:
    return Classifier.default()


def test_pinned_classifications_unchanged(clf):
    rows = _pinned()
    assert len(rows) > 1000
    changed = [(row["text"], row["result"], got) for row in rows
               if (got := _record(clf, row["text"])) != row["result"]]
    assert not changed, f"{len(changed)} classifications changed, first: {changed[0]}"


def test_without_explanation_only_evidence_and_impact_are_left_out(clf):
    """classify(text, explain=False) (the CLI without --explain) skips the explanation; every other field,
    the signal included, is the pinned one."""
    rows = _pinned()
    changed = []
    explained = 0
    for row in rows:
        result = clf.classify(row["text"], explain=False)
        want = {**row["result"], "evidence": [], "impact": None}
        got = {**result.as_dict(explain=True), "signal": result.signal}
        if got != want:
            changed.append((row["text"], want, got))
        explained += bool(row["result"]["evidence"] or row["result"]["impact"])
    assert explained > 500  # the pinned rows do have explanations to leave out
    assert not changed, f"{len(changed)} classifications differ, first: {changed[0]}"


def _texts() -> list[str]:
    return [row["text"] for row in _pinned()]


def test_scan_finds_every_occurrence_of_every_word(clf):
    """The segmenter's pass finds exactly the lexicon words a plain substring search finds."""
    lexicon = clf._lexicon
    words = lexicon._words
    longest = max(len(w) for w in words)
    for text in _texts():
        _, match = clf._normalize(text)
        _, found = lexicon.segmenter.scan(match, frozenset(CLAUSE_BREAKS), words)
        expected = {(i, j, match[i:j]) for i in range(len(match))
                    for j in range(i + 1, min(len(match), i + longest) + 1) if match[i:j] in words}
        assert sorted(found) == sorted(expected), text


def test_scan_segments_each_clause_as_cut_does_alone(clf):
    """Segmenting every clause in one pass gives each clause the tokens cut() gives it on its own."""
    segmenter = clf._lexicon.segmenter
    breaks = frozenset(CLAUSE_BREAKS)
    for text in _texts():
        _, match = clf._normalize(text)
        nxt, _ = segmenter.scan(match, breaks)
        start = 0
        for end in [i for i, ch in enumerate(match) if ch in breaks] + [len(match)]:
            tokens = []
            x = start
            while x < end:
                tokens.append(match[x:nxt[x]])
                x = nxt[x]
            assert tokens == segmenter.cut(match[start:end]), (text, match[start:end])
            start = end + 1


if __name__ == "__main__":  # pragma: no cover - rewrites the pinned results after a deliberate change
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_nlp_pinned.py --write")
    classifier = Classifier.default()
    with open(PINNED, "w", encoding="utf-8") as out:
        for text in _texts():
            out.write(json.dumps({"text": text, "result": _record(classifier, text)}, ensure_ascii=False) + "\n")
