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
    parser.add_argument("--out", help="PNG to write, or a directory to write timeline-<run_id[:8]>.png in "
                        "(default: that name here); an existing file not written by timeline needs --force")
    parser.add_argument("--force", action="store_true", help="overwrite --out even if timeline did not write it")


def main(args: argparse.Namespace) -> int:
    from profiler.results import read_records

    path = Path(args.results)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        print(f"error: results: {str(path)!r} {what}; allowed: a JSONL file of result lines", file=sys.stderr)
        return 2
    try:  # damaged lines (a truncated last one) are skipped with one warning, as every reader does
        records = read_records([path])
    except OSError as exc:
        print(f"error: results: {str(path)!r} cannot be read ({exc.strerror})", file=sys.stderr)
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
    from profiler.learn.timeline import plot_timeline, written_by_us

    name = f"timeline-{record['run_id'][:8]}.png"
    out = Path(args.out or name)
    if out.is_dir():  # a folder: the default name inside it
        out = out / name
    problem = picture_problem(str(out), path)
    if problem:
        print(f"error: --out: {problem}", file=sys.stderr)
        return 2
    if out.exists() and not args.force and not written_by_us(out):
        print(f"error: --out: {str(out)!r} exists and was not written by timeline; allowed: a new path, a "
              "directory, or --force to overwrite it", file=sys.stderr)
        return 2
    out = plot_timeline(record, out)
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
