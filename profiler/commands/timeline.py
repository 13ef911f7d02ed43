"""`python -m profiler timeline RESULTS.jsonl [--run-id ID] [--out FILE.png]`: draw one line's memory timeline.

Works on any result line: `run`, `simulate` and `track` (the Trainer callback, `trace`). The last line of
the file is drawn unless `--run-id` (a prefix is enough) picks another. Exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="a JSONL file of result lines")
    parser.add_argument("--run-id", help="the line to draw (run_id or a prefix of it; default: the last line)")
    parser.add_argument("--out", help="PNG to write (default: timeline-<run_id[:8]>.png here)")


def main(args: argparse.Namespace) -> int:
    from profiler.results import read_records

    path = Path(args.results)
    if not path.is_file():
        print(f"error: results: file {str(path)!r} does not exist; allowed: a JSONL file of result lines",
              file=sys.stderr)
        return 2
    try:
        records = read_records([path], strict=True)
    except ValueError as exc:
        print(f"error: results: {exc}", file=sys.stderr)
        return 2
    if args.run_id:
        records = [r for r in records if r["run_id"].startswith(args.run_id)]
    if not records:
        what = f"no line with run_id {args.run_id!r}" if args.run_id else "no result lines"
        print(f"error: results: {what} in {path}", file=sys.stderr)
        return 2
    record = records[-1]
    if not any(p.get("phase") for p in record.get("phases") or []):
        print(f"error: results: line {record['run_id'][:8]} has no phases to draw (status {record['status']})",
              file=sys.stderr)
        return 2
    from profiler.learn.timeline import plot_timeline

    problem = picture_problem(args.out, path) if args.out else None
    if problem:
        print(f"error: --out: {problem}", file=sys.stderr)
        return 2
    out = plot_timeline(record, args.out or f"timeline-{record['run_id'][:8]}.png")
    print(f"timeline of {record['run_id'][:8]} ({record.get('source') or 'run'}) written to {out}")
    return 0


def picture_problem(out: str, results: Path) -> str | None:
    """Why --out cannot be the picture (None where it can): its suffix names no format matplotlib writes
    (Figure.canvas.get_supported_filetypes), or it is the results file being read."""
    from matplotlib.figure import Figure

    formats = sorted(Figure().canvas.get_supported_filetypes())
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in formats:
        return (f"{out!r} does not name a picture format; allowed: a file name ending in "
                f"{', '.join('.' + f for f in formats)}")
    if Path(out).resolve() == results.resolve():
        return f"{out!r} is the results file being drawn; allowed: another file name"
    return None
