"""Accuracy and speed of the fault-report classifier on labelled JSONL files.

    python bench/nlp_accuracy.py [FILE ...] [--taxonomy FILE] [--cli-lines N] [--jobs N]
                                 [--cli-root DIR] [--runs N] [--json]

Each FILE (default: the two dev sets, tests/data/reports-dev.jsonl and
tests/data/reports-facility-dev.jsonl) has one JSON object per line:
{"text": ..., "category": ..., "priority": ..., "serial"?, "location"?, "error_code"?, "phone"?, "domain"?}.

Prints, per file, category and priority accuracy (overall and per label) with
the worst confusions and entity precision / recall / F1 per field; then the
same accuracy per domain over all files: industrial, facility (lifts, air
conditioning, access control, lighting) and office (office devices and
software), taken from a row's "domain" or else from its labelled category.
A phone number counts as found when its digits match (138-6712-0453 is
13867120453).

Speed: in-process throughput after warm-up (with and without the explanation,
per second and per CPU-second), and for the CLI
(`python run_bot.py classify`) its start-up time (median of `echo 好的 |
python run_bot.py classify`) and its throughput after start-up (median of
--runs runs), measured on noisy 20-80 character reports made from the files'
texts (greetings, fillers, phone numbers and emoji added; every line differs,
so no cache can help). --cli-root measures another checkout's CLI with the
same input (before/after comparisons). Each CLI figure is given in wall time
and in CPU time (user + system of the CLI and its worker processes): reports
per CPU-second do not depend on what else the machine is doing, wall-clock
figures do, so the load average is printed with them.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import resource
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
DEFAULT_FILES = ("reports-dev.jsonl", "reports-facility-dev.jsonl")
FACILITY = frozenset({"elevator", "hvac", "security", "lighting"})
OFFICE = frozenset({"office_it", "software"})
DOMAINS = ("industrial", "facility", "office")


def domain_of(row: dict) -> str:
    """A row's domain: its "domain" field, else facility / office by its labelled category."""
    if row.get("domain") in DOMAINS:
        return row["domain"]
    if row["category"] in FACILITY:
        return "facility"
    if row["category"] in OFFICE:
        return "office"
    return "industrial"


def _same(field: str, gold, pred) -> bool:
    if field == "phone" and gold is not None and pred is not None:
        return re.sub(r"\D", "", gold) == re.sub(r"\D", "", pred)
    return gold is not None and pred == gold


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
            if gold is not None and _same(field, gold, pred):
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


def throughput(classifier: Classifier, texts: list[str], seconds: float = 2.0,
               explain: bool = True) -> tuple[float, float]:
    """(reports per second, reports per CPU-second) of this process classifying `texts` for about
    `seconds`; explain=False as the CLI without --explain (no evidence or impact worked out)."""
    classify = classifier.classify
    for text in texts:  # warm-up
        classify(text, explain)
    done = 0
    start = time.perf_counter()
    cpu = time.process_time()
    while True:
        for text in texts:
            classify(text, explain)
        done += len(texts)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed, done / max(time.process_time() - cpu, 1e-9)


_PREFIXES = ("", "", "", "你好,", "师傅,", "麻烦看下 ", "喂 ", "急!", "王工你好，", "在吗？", "物业这边,", "早上好 ")
_SUFFIXES = ("", "", "谢谢", "!!", "～", "快点", "电话13812345678", "😭", "🙏", "，辛苦了", "。。。", " 在线等",
             "麻烦尽快安排一下", "不知道怎么回事")
_FILLERS = ("了", " ", "，", "那个", "就是", "好像", "一直", "又")


def noisy_reports(texts: list[str], count: int, seed: int = 7) -> list[str]:
    """`count` different 20-80 character chat-style reports made from `texts` (deterministic)."""
    rnd = random.Random(seed)
    base = [t.replace("\n", " ") for t in texts]
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        t = rnd.choice(base)
        if rnd.random() < 0.5:
            i = rnd.randrange(len(t) + 1)
            t = t[:i] + rnd.choice(_FILLERS) + t[i:]
        t = rnd.choice(_PREFIXES) + t + rnd.choice(_SUFFIXES) + (f" #{rnd.randrange(10**6)}" if t in seen else "")
        if 20 <= len(t) <= 80 and t not in seen:
            seen.add(t)
            out.append(t)
    return out


def _cli(root: Path, taxonomy: str | None, jobs: int | None) -> list[str]:
    return ([sys.executable, str(root / "run_bot.py"), "classify"] + (["--taxonomy", taxonomy] if taxonomy else [])
            + ([f"--jobs={jobs}"] if jobs else []))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed_run(cmd: list[str], **kwargs) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children) of one run of cmd."""
    cpu = _children_cpu()
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True, cwd=ROOT, **kwargs)
    return time.perf_counter() - start, _children_cpu() - cpu


def cli_startup(taxonomy: str | None, runs: int = 5, root: Path = ROOT) -> tuple[float, float]:
    """Median (wall, CPU) seconds of `echo 好的 | python run_bot.py classify` (warm: one run first)."""
    cmd = _cli(root, taxonomy, None)
    _timed_run(cmd, input="好的\n".encode())
    walls, cpus = zip(*(_timed_run(cmd, input="好的\n".encode()) for _ in range(runs)))
    return statistics.median(walls), statistics.median(cpus)


def cli_throughput(lines: list[str], startup: tuple[float, float], taxonomy: str | None, jobs: int | None = None,
                   runs: int = 3, root: Path = ROOT) -> tuple[float, float]:
    """Median reports per second and per CPU-second through the CLI, start-up (wall, CPU) subtracted."""
    cmd = _cli(root, taxonomy, jobs)
    rates = []
    cpu_rates = []
    with tempfile.TemporaryFile() as fh:
        fh.write("".join(line + "\n" for line in lines).encode("utf-8"))
        for _ in range(runs):
            fh.seek(0)
            wall, cpu = _timed_run(cmd, stdin=fh)
            rates.append(len(lines) / max(wall - startup[0], 1e-9))
            cpu_rates.append(len(lines) / max(cpu - startup[1], 1e-9))
    return statistics.median(rates), statistics.median(cpu_rates)


def print_accuracy(report: dict, top: int) -> None:
    for field in ("category", "priority"):
        r = report[field]
        print(f"\n{field} accuracy: {r['accuracy']:.3f}")
        for label, v in r["per_label"].items():
            mark = "" if v["accuracy"] == 1 else "  <"
            print(f"  {label:16s} {v['correct']:4d}/{v['total']:<4d} {v['accuracy']:.3f}{mark}")
        if r["confusions"]:
            print("  worst confusions (gold -> predicted):")
            for c in r["confusions"][:top]:
                print(f"    {c['gold']} -> {c['predicted']}: {c['count']}")
    e = report["entities"]
    print(f"\nentity F1: {e['f1']:.3f} (precision {e['precision']:.3f}, recall {e['recall']:.3f})")
    for field, v in e["fields"].items():
        print(f"  {field:11s} F1 {v['f1']:.3f}  tp {v['tp']} fp {v['fp']} fn {v['fn']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", default=[str(ROOT / "tests" / "data" / f) for f in DEFAULT_FILES])
    p.add_argument("--taxonomy", help="taxonomy file (default: the packaged one)")
    p.add_argument("--cli-lines", type=int, default=20000, help="noisy reports piped through the CLI (0 to skip)")
    p.add_argument("--jobs", type=int, help="the CLI's --jobs (default: its own default)")
    p.add_argument("--runs", type=int, default=3, help="CLI throughput runs (the median is shown)")
    p.add_argument("--cli-root", help="measure the CLI of this checkout instead (same input)")
    p.add_argument("--top", type=int, default=8, help="confusions to show")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)

    start = time.perf_counter()
    classifier = Classifier.from_file(args.taxonomy) if args.taxonomy else Classifier.default()
    build = time.perf_counter() - start
    report: dict = {"files": {}, "build_seconds": build}
    all_rows: list[dict] = []
    all_results: list = []
    for name in args.files:
        rows = load_rows(Path(name))
        results = [classifier.classify(row["text"]) for row in rows]
        report["files"][name] = {"reports": len(rows), **accuracy_report(rows, results)}
        all_rows += rows
        all_results += results
    by_domain: dict[str, tuple[list, list]] = {d: ([], []) for d in DOMAINS}
    for row, res in zip(all_rows, all_results):
        rows, results = by_domain[domain_of(row)]
        rows.append(row)
        results.append(res)
    report["domains"] = {d: {"reports": len(rows), **accuracy_report(rows, results)}
                         for d, (rows, results) in by_domain.items() if rows}
    texts = [row["text"] for row in all_rows]
    report["throughput"], report["throughput_per_cpu_second"] = throughput(classifier, texts)
    report["throughput_unexplained"], report["throughput_unexplained_per_cpu_second"] = throughput(
        classifier, texts, explain=False)
    if args.cli_lines > 0:
        root = Path(args.cli_root).resolve() if args.cli_root else ROOT
        lines = noisy_reports(texts, args.cli_lines)
        report["cli_root"] = str(root)
        report["load_average_before"] = os.getloadavg()
        report["cli_startup_seconds"], report["cli_startup_cpu_seconds"] = cli_startup(args.taxonomy, root=root)
        report["cli_throughput"], report["cli_throughput_per_cpu_second"] = cli_throughput(
            lines, (report["cli_startup_seconds"], report["cli_startup_cpu_seconds"]), args.taxonomy,
            args.jobs, args.runs, root)
        report["load_average_after"] = os.getloadavg()

    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return 0

    for name, r in report["files"].items():
        print(f"=== file: {name} ({r['reports']} reports)")
        print_accuracy(r, args.top)
        print()
    print("=== per domain (all files)")
    print(f"  {'domain':11s} {'reports':>7s} {'category':>9s} {'priority':>9s} {'location F1':>12s} {'entity F1':>10s}")
    for d, r in report["domains"].items():
        print(f"  {d:11s} {r['reports']:7d} {r['category']['accuracy']:9.3f} {r['priority']['accuracy']:9.3f} "
              f"{r['entities']['fields']['location']['f1']:12.3f} {r['entities']['f1']:10.3f}")
    print(f"\nclassifier build (in process): {report['build_seconds']:.2f} s")
    print(f"throughput (in process, after warm-up): {report['throughput']:.0f} reports/s wall, "
          f"{report['throughput_per_cpu_second']:.0f} reports per CPU-second; without the explanation "
          f"(as the CLI without --explain): {report['throughput_unexplained']:.0f} reports/s wall, "
          f"{report['throughput_unexplained_per_cpu_second']:.0f} reports per CPU-second")
    if "cli_startup_seconds" in report:
        print(f"CLI ({report['cli_root']})")
        print(f"CLI start-up (echo 好的 | python run_bot.py classify, median): {report['cli_startup_seconds']:.2f} s "
              f"wall, {report['cli_startup_cpu_seconds']:.2f} s CPU")
        jobs = f", --jobs={args.jobs}" if args.jobs else ""
        print(f"CLI throughput ({args.cli_lines} noisy 20-80 character reports{jobs}, after start-up, "
              f"median of {args.runs}): {report['cli_throughput']:.0f} reports/s wall, "
              f"{report['cli_throughput_per_cpu_second']:.0f} reports per CPU-second")
        print("load average (1, 5, 15 min) before / after the CLI runs: "
              + " / ".join(", ".join(f"{x:.2f}" for x in report[k])
                           for k in ("load_average_before", "load_average_after")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
