"""`validate [--subset fast] [--only TAG] [--out DIR] [--rows FILE]`: every prediction against published GPU figures.

The rows (validation/published.yaml, or --rows) are figures others measured on GPUs, each with the config that
expresses it in our terms; profiler.predict.validation runs the predictor each row needs, converts it to the
row's unit and metric and prints the error table and the summary by group. Writes validation[-SUFFIX].csv,
.png and .json (when, which commit, wall time, load) to --out. With --subset fast the median |error| is checked
against validation/baseline.json (--write-baseline writes it). Exit codes: 0 done, 1 the subset's median rose
more than 2 points above the baseline (or a subset row failed), 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from profiler.config import REPO_ROOT

DEFAULT_OUT = REPO_ROOT / "results" / "validation"
DEFAULT_BASELINE = REPO_ROOT / "validation" / "baseline.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subset", choices=["fast"], help="fast: the CI rows (a few single simulations)")
    parser.add_argument("--only", metavar="TAG", help="rows with this tag: a source group (torchtitan, answerai, "
                        "peft-docs, ms-swift, axolotl, peft-bench), a stack, current/old, single/multi, dense/moe, "
                        "expressible, or a row id")
    parser.add_argument("--out", metavar="DIR", help=f"where the CSV, PNG and JSON go (default {DEFAULT_OUT})")
    parser.add_argument("--rows", metavar="FILE", help="rows file (default validation/published.yaml in a checkout)")
    parser.add_argument("--baseline", metavar="FILE", help=f"baseline for --subset (default {DEFAULT_BASELINE})")
    parser.add_argument("--write-baseline", action="store_true",
                        help="write this run's median |error| as the baseline (needs --subset)")
    parser.add_argument("--no-cache", action="store_true", help="predict every row again (no prediction cache)")


def _out_dir(arg: str | None) -> Path:
    from profiler.config import ConfigError

    out = Path(arg) if arg else DEFAULT_OUT
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {str(out)!r} is a file; allowed: a directory (created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out: cannot create {str(out)!r} ({exc.strerror}); allowed: a writable directory") \
            from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"--out: {str(out)!r} is not writable; allowed: a writable directory")
    return out


def select(rows: list, subset: str | None, only: str | None) -> list:
    """The rows of the subset and with the tag; ConfigError naming the allowed tags for an unknown one."""
    from profiler.config import ConfigError

    if only is not None:
        tags = {t for r in rows for t in r.tags()}
        if only not in tags:
            ids = {r.id for r in rows}
            allowed = sorted(tags - ids)
            raise ConfigError(f"--only: {only!r} is not a tag of any row; allowed: {', '.join(allowed)} or a row id")
        rows = [r for r in rows if only in r.tags()]
    if subset is not None:
        rows = [r for r in rows if subset in r.subset]
        if not rows:
            raise ConfigError(f"--subset: no row is in subset {subset!r} (rows say `subset: [{subset}]`)")
    return [r for r in rows if r.is_memory]


def _commit() -> str:
    import subprocess

    try:
        sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "profiler", "validation"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("+dirty" if dirty else "")


def main(args: argparse.Namespace) -> int:
    from profiler.config import ConfigError

    try:
        from profiler.predict.validation.rows import load_rows

        rows = select(load_rows(args.rows), args.subset, args.only)
        baseline = Path(args.baseline) if args.baseline else DEFAULT_BASELINE
        if args.write_baseline and not args.subset:
            raise ConfigError("--write-baseline: needs --subset (the baseline is a subset's median)")
        if args.baseline and not args.write_baseline and not baseline.is_file():
            raise ConfigError(f"--baseline: file {str(baseline)!r} does not exist")
        out = _out_dir(args.out)  # last: nothing is created for a refused command
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import json
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from profiler.measure.quiet import quiet_libraries
    from profiler.predict.validation import report
    from profiler.predict.validation.run import Cache, default_cache, evaluate

    quiet_libraries()
    load0, t0 = os.getloadavg(), time.perf_counter()
    cache = Cache(None) if args.no_cache else default_cache()
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=False) as prog:
        task = prog.add_task("validate", total=len(rows))

        def on_row(row, i):
            prog.update(task, completed=i, description=f"predicting {row.id}")

        df = evaluate(rows, cache, on_row)
        prog.update(task, completed=len(rows), description="validate: done")
    wall = time.perf_counter() - t0
    summ = report.summary(df)
    console = Console(width=160)
    report.render(df, summ, console)
    suffix = "".join(f"-{x}" for x in (args.subset, args.only) if x)
    stem = out / f"validation{suffix}"
    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "commit": _commit(), "rows_file": str(args.rows or
            "validation/published.yaml"), "subset": args.subset, "only": args.only, "rows": len(df),
            "wall_s": round(wall, 1), "load_average_start": [round(x, 2) for x in load0],
            "load_average_end": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
            "cached_rows": int(df["cached"].fillna(False).astype(bool).sum()),
            "what": "predictions (simulate / components, no GPU) vs figures published by others; not our measurements"}
    df.to_csv(f"{stem}.csv", index=False)
    summ.to_csv(f"{stem}-summary.csv", index=False)
    Path(f"{stem}.json").write_text(json.dumps(meta, indent=1) + "\n")
    if report.ran(df).shape[0]:
        report.plot(df, Path(f"{stem}.png"))
    console.print(f"wrote {stem}.csv, {stem}-summary.csv, {stem}.json, {stem}.png ({wall:.0f} s, "
                  f"{meta['cached_rows']} rows from the cache)")
    missing = report.uncaused_misses(df)
    if missing:
        console.print(f"note: off by more than {report.MISS_PCT:g} % with no stated cause: {', '.join(missing)}")
    if args.subset is None:
        return 0
    failed = list(df[df["error"].notna()]["id"])
    if args.write_baseline:
        baseline.parent.mkdir(parents=True, exist_ok=True)
        baseline.write_text(json.dumps(report.baseline_data(df, args.subset, meta), indent=1) + "\n")
        console.print(f"wrote baseline {baseline}")
        return 0
    if not baseline.is_file():
        console.print(f"no baseline at {baseline}: nothing to compare (write one with --write-baseline)")
        return 1 if failed else 0
    ok, line = report.baseline_check(df, baseline)
    console.print(line)
    if failed:
        console.print(f"FAILED: rows of the subset that could not be predicted: {', '.join(failed)}")
    return 0 if ok and not failed else 1
