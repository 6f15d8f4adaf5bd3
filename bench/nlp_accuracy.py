"""Accuracy and speed of the fault-report classifier on a labelled JSONL file.

    python bench/nlp_accuracy.py [FILE] [--taxonomy FILE] [--cli-lines N] [--json]

FILE (default tests/data/reports-dev.jsonl) has one JSON object per line:
{"text": ..., "category": ..., "priority": ..., "serial"?, "location"?, "error_code"?, "phone"?}.

Prints category and priority accuracy (overall and per label) with the worst
confusions, entity precision / recall / F1, in-process throughput after
warm-up, and for the CLI (`python run_bot.py classify`) its start-up time
(`echo 好的 | python run_bot.py classify`) and its throughput after start-up.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nlp import Classifier  # noqa: E402

ENTITY_FIELDS = ("serial", "location", "error_code", "phone")


def load_rows(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"{path}:{n}: not JSON: {exc}") from None
            for key in ("text", "category", "priority"):
                if key not in row:
                    raise SystemExit(f"{path}:{n}: missing {key!r}")
            rows.append(row)
    if not rows:
        raise SystemExit(f"{path}: no reports")
    return rows


def accuracy_report(rows: list[dict], results: list) -> dict:
    out: dict = {}
    for field in ("category", "priority"):
        per: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        confusions: collections.Counter[tuple[str, str]] = collections.Counter()
        correct = 0
        for row, res in zip(rows, results):
            gold, pred = row[field], getattr(res, field)
            per[gold][1] += 1
            if gold == pred:
                per[gold][0] += 1
                correct += 1
            else:
                confusions[(gold, pred)] += 1
        out[field] = {
            "accuracy": correct / len(rows),
            "per_label": {k: {"correct": v[0], "total": v[1], "accuracy": v[0] / v[1]}
                          for k, v in sorted(per.items())},
            "confusions": [{"gold": g, "predicted": p, "count": c} for (g, p), c in confusions.most_common()],
        }
    # entities: exact match of the extracted value
    fields: dict[str, dict[str, int]] = {}
    total = {"tp": 0, "fp": 0, "fn": 0}
    for field in ENTITY_FIELDS:
        tp = fp = fn = 0
        for row, res in zip(rows, results):
            gold, pred = row.get(field), getattr(res, field)
            if gold is not None and pred == gold:
                tp += 1
            else:
                if pred is not None:
                    fp += 1
                if gold is not None:
                    fn += 1
        fields[field] = {"tp": tp, "fp": fp, "fn": fn, **_prf(tp, fp, fn)}
        total["tp"] += tp
        total["fp"] += fp
        total["fn"] += fn
    out["entities"] = {"fields": fields, **_prf(total["tp"], total["fp"], total["fn"]), **total}
    return out


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def throughput(classifier: Classifier, texts: list[str], seconds: float = 2.0) -> float:
    for text in texts:  # warm-up
        classifier.classify(text)
    done = 0
    start = time.perf_counter()
    while True:
        for text in texts:
            classifier.classify(text)
        done += len(texts)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def cli_startup(taxonomy: str | None, runs: int = 3) -> float:
    """Median wall time of `echo 好的 | python run_bot.py classify`."""
    cmd = [sys.executable, str(ROOT / "run_bot.py"), "classify"] + (["--taxonomy", taxonomy] if taxonomy else [])
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, input="好的\n".encode(), stdout=subprocess.DEVNULL, check=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cli_throughput(texts: list[str], lines: int, startup: float, taxonomy: str | None) -> float:
    """Reports per second through the CLI, start-up time subtracted."""
    cmd = [sys.executable, str(ROOT / "run_bot.py"), "classify"] + (["--taxonomy", taxonomy] if taxonomy else [])
    with tempfile.TemporaryFile() as fh:
        for i in range(lines):
            fh.write(texts[i % len(texts)].replace("\n", " ").encode("utf-8") + b"\n")
        fh.seek(0)
        start = time.perf_counter()
        subprocess.run(cmd, stdin=fh, stdout=subprocess.DEVNULL, check=True, cwd=ROOT)
        elapsed = time.perf_counter() - start
    return lines / max(elapsed - startup, 1e-9)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", nargs="?", default=str(ROOT / "tests" / "data" / "reports-dev.jsonl"))
    p.add_argument("--taxonomy", help="taxonomy file (default: the packaged one)")
    p.add_argument("--cli-lines", type=int, default=20000, help="lines piped through the CLI (0 to skip)")
    p.add_argument("--top", type=int, default=8, help="confusions to show")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)

    rows = load_rows(Path(args.file))
    start = time.perf_counter()
    classifier = Classifier.from_file(args.taxonomy) if args.taxonomy else Classifier.default()
    build = time.perf_counter() - start
    results = [classifier.classify(row["text"]) for row in rows]
    report = accuracy_report(rows, results)
    texts = [row["text"] for row in rows]
    report["throughput"] = throughput(classifier, texts)
    report["build_seconds"] = build
    if args.cli_lines > 0:
        report["cli_startup_seconds"] = cli_startup(args.taxonomy)
        report["cli_throughput"] = cli_throughput(texts, args.cli_lines, report["cli_startup_seconds"], args.taxonomy)
    report["file"] = str(args.file)
    report["reports"] = len(rows)

    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return 0

    print(f"file: {args.file} ({len(rows)} reports)")
    for field in ("category", "priority"):
        r = report[field]
        print(f"\n{field} accuracy: {r['accuracy']:.3f}")
        for label, v in r["per_label"].items():
            mark = "" if v["accuracy"] == 1 else "  <"
            print(f"  {label:16s} {v['correct']:4d}/{v['total']:<4d} {v['accuracy']:.3f}{mark}")
        if r["confusions"]:
            print("  worst confusions (gold -> predicted):")
            for c in r["confusions"][: args.top]:
                print(f"    {c['gold']} -> {c['predicted']}: {c['count']}")
    e = report["entities"]
    print(f"\nentity F1: {e['f1']:.3f} (precision {e['precision']:.3f}, recall {e['recall']:.3f})")
    for field, v in e["fields"].items():
        print(f"  {field:11s} F1 {v['f1']:.3f}  tp {v['tp']} fp {v['fp']} fn {v['fn']}")
    print(f"\nclassifier build (in process): {report['build_seconds']:.2f} s")
    print(f"throughput (in process, after warm-up): {report['throughput']:.0f} reports/s")
    if "cli_startup_seconds" in report:
        print(f"CLI start-up (echo 好的 | python run_bot.py classify): {report['cli_startup_seconds']:.2f} s")
        print(f"CLI throughput ({args.cli_lines} lines, after start-up): {report['cli_throughput']:.0f} reports/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
