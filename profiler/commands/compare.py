"""`python -m profiler compare RESULTS.jsonl ... [--out DIR] [--against auto|allocated|reserved|nvml]`

Tables (markdown, CSV) and plots of measured vs every estimator; the logic is in profiler/learn/compare.py.
Damaged result lines (not JSON, not UTF-8, not a record, a newer schema_version) are skipped with one warning.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from profiler.learn.compare import AGAINST, compare_tables, simulated_peaks, write_outputs
from profiler.results import OutputError, check_directory, read_run_records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", help="result JSONL files (results/runs/*.jsonl)")
    parser.add_argument(
        "--out", default="results/figures/compare", help="output folder (default %(default)s)"
    )
    parser.add_argument(
        "--against", choices=AGAINST, default="auto", help="measurement errors are taken against"
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--simulated", nargs="+", metavar="FILE",
                        help="simulate result lines (results/simulated/*.jsonl): put `simulate` on trial too, "
                        "matched to measured runs by config hash")


def main(args: argparse.Namespace) -> int:
    for flag, paths in (("results", args.results), ("--simulated", args.simulated or [])):
        bad = next((p for p in paths if not Path(p).is_file()), None)
        if bad is not None:
            what = "is a directory" if Path(bad).is_dir() else "does not exist"
            print(f"error: {flag}: {bad!r} {what}; allowed: a JSONL file of result lines", file=sys.stderr)
            return 2
    try:  # before any work: an unusable --out is bad input
        check_directory(args.out, "--out")
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        records = read_run_records(args.results)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    simulated = None
    if args.simulated:
        try:
            simulated = simulated_peaks(read_run_records(args.simulated))
        except (OSError, ValueError) as exc:
            print(f"error: --simulated: {exc}", file=sys.stderr)
            return 2
    tables = compare_tables(records, args.against, simulated)
    if tables["runs"].empty:
        print("error: no ok runs with peaks in the given results", file=sys.stderr)
        return 1
    if tables["summary"].empty:
        print(f"error: no ok run has a {args.against} figure to compare against (CPU and simulated runs have "
              "no NVML or reserved figures; try --against allocated)", file=sys.stderr)
        return 1
    written = write_outputs(tables, Path(args.out), records, plots=not args.no_plots)
    console = Console(width=160)
    t = Table(title="estimator x regime: signed error % vs measured (MAPE = mean |error|)")
    for c in tables["summary"].columns:
        t.add_column(str(c), justify="right")
    for r in tables["summary"].itertuples(index=False):
        t.add_row(*map(str, r))
    console.print(t)
    console.print(f"wrote {len(written)} files to {args.out}")
    return 0
