"""Command line: classify reports, one per line on stdin, one JSON object per line on stdout.

    python run_bot.py classify [--explain] [--sop] [--taxonomy FILE] < reports.txt

Each output line has category, priority, serial, location, error_code and
phone (null when absent); --explain adds category_name, score, evidence and
impact; --sop adds the best SOP card (or null). An empty input line gives an
``other``/``P2`` line. Output is flushed per line only when stdin or stdout is
a terminal; otherwise lines are read in chunks and, with --jobs above 1,
classified by that many forked worker processes (output order is kept).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import multiprocessing
import os
import sys
from typing import IO, Any, Callable, Iterable, Iterator

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
    p.add_argument("--jobs", type=int, default=_default_jobs(), metavar="N",
                   help="worker processes for piped input (default: the CPUs available, at most 4)")
    return p


_CHUNK = 500  # lines handed to a worker at a time
_MAX_DEFAULT_JOBS = 4


def _default_jobs() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, _MAX_DEFAULT_JOBS))


# the worker's renderer: set in the parent before forking, inherited by the workers
_render: Callable[[str], str] | None = None


def _render_chunk(lines: list[str]) -> str:
    assert _render is not None
    return "".join([_render(line) for line in lines])


def _renderer(classifier: Any, library: Any, explain: bool) -> Callable[[str], str]:
    """One input line -> one JSON output line (with its newline)."""
    # one encoder for every line (json.dumps with options builds a new one per call)
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    classify = classifier.classify

    def render(line: str) -> str:
        # without --explain the evidence and impact are not printed, so not worked out either
        result = classify(line, explain)
        record = result.as_dict(explain=explain)
        if library is not None:
            card = library.lookup(result)
            record["sop"] = None if card is None else {
                "key": card.key, "title": card.title, "steps": list(card.steps)}
        return dumps(record) + "\n"

    return render


def _chunks(lines: Iterable[str]) -> Iterator[list[str]]:
    it = iter(lines)
    while True:
        chunk = list(itertools.islice(it, _CHUNK))
        if not chunk:
            return
        yield chunk


def _rendered(lines: Iterable[str], render: Callable[[str], str], jobs: int) -> Iterator[str]:
    """Rendered chunks in input order: in this process, or by `jobs` forked workers once there is
    more than one chunk (a short input never pays for starting them)."""
    global _render
    chunks = _chunks(lines)
    first = next(chunks, None)
    if first is None:
        return
    second = next(chunks, None)
    if second is None or jobs <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for chunk in itertools.chain([first], [] if second is None else [second], chunks):
            yield "".join([render(line) for line in chunk])
        return
    _render = render
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap(_render_chunk, itertools.chain([first, second], chunks))


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

    try:
        interactive = interactive or stdin.isatty()
    except (AttributeError, ValueError):
        pass
    if args.jobs < 1:
        print("relaydesk: --jobs must be at least 1", file=sys.stderr)
        return EXIT_USAGE

    render = _renderer(classifier, library, args.explain)
    write = stdout.write
    try:
        if interactive:
            for line in _lines(stdin):
                write(render(line))
                stdout.flush()
        else:
            for block in _rendered(_lines(stdin), render, args.jobs):
                write(block)
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
