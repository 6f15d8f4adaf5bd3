"""Command line: classify reports, one per line on stdin, one JSON object per line on stdout.

    python run_bot.py classify [--explain] [--sop] [--taxonomy FILE] < reports.txt

Each output line has category, priority, serial, location, error_code and
phone (null when absent); --explain adds category_name, score, evidence and
impact; --sop adds the best SOP card (or null). An empty input line gives an
``other``/``P2`` line. Output is flushed per line only when stdout is a
terminal, otherwise it is buffered for throughput.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from typing import IO, Iterable

from .classifier import Classifier
from .sop import SopLibrary
from .taxonomy import TaxonomyError

__all__ = ["main"]

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_bot.py classify",
        description="Classify fault reports: one report per line on stdin, one JSON object per line on stdout.",
    )
    p.add_argument("--explain", action="store_true",
                   help="add category_name, score, evidence and impact to each line")
    p.add_argument("--sop", action="store_true", help="add the best matching SOP card to each line")
    p.add_argument("--taxonomy", metavar="PATH", help="taxonomy file to use instead of the packaged default")
    p.add_argument("--sop-file", metavar="PATH", help="SOP file to use with --sop instead of the packaged default")
    return p


def _lines(stream: IO[str]) -> Iterable[str]:
    for line in stream:
        yield line.rstrip("\r\n")


def main(argv: list[str] | None = None, stdin: IO[str] | None = None, stdout: IO[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "classify":
        args_list = args_list[1:]
    try:
        args = _parser().parse_args(args_list)
    except SystemExit as exc:  # argparse already printed the message
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE

    try:
        classifier = Classifier.from_file(args.taxonomy) if args.taxonomy else Classifier.default()
        library = None
        if args.sop:
            library = (SopLibrary.from_file(args.sop_file, categories=classifier.taxonomy.categories)
                       if args.sop_file else SopLibrary.default())
    except TaxonomyError as exc:
        print(f"relaydesk: {exc}", file=sys.stderr)
        return EXIT_USAGE

    if stdin is None:
        stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    if stdout is None:
        try:
            sys.stdout.reconfigure(encoding="utf-8", errors="replace")  # type: ignore[union-attr]
        except (AttributeError, io.UnsupportedOperation):
            pass
        stdout = sys.stdout
    try:
        interactive = stdout.isatty()
    except (AttributeError, ValueError):
        interactive = False

    explain = args.explain
    dumps = json.dumps
    write = stdout.write
    classify = classifier.classify
    try:
        for line in _lines(stdin):
            result = classify(line)
            record = result.as_dict(explain=explain)
            if library is not None:
                card = library.lookup(result)
                record["sop"] = None if card is None else {
                    "key": card.key, "title": card.title, "steps": list(card.steps)}
            write(dumps(record, ensure_ascii=False))
            write("\n")
            if interactive:
                stdout.flush()
        stdout.flush()
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, without a traceback at exit
        if stdout is sys.stdout:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):  # pragma: no cover
                pass
        return 0
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
