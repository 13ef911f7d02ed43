"""`python -m profiler calibrate RESULTS... --out results/calibration/ [--figures results/figures/]`

Fits correction factors per GPU and regime (profiler/learn/calibrate.py) and writes the tables and figures.
Damaged result lines are skipped with one warning; file names come from sanitised slugs (never a path).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from profiler.learn.calibrate import CALIBRATION_DIR, fit_rows, fmt_pct, to_samples, write_figures, write_tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", help="result JSONL files or directories of them")
    parser.add_argument("--out", default=str(CALIBRATION_DIR),
                        help="output directory (default: ./%(default)s of the working directory)")
    parser.add_argument("--figures", help="also write measured-vs-predicted PNGs into this directory")
    parser.add_argument("--estimator", default="components",
                        help="estimator to calibrate (default: %(default)s), or simulate (the fake-tensor run, "
                        "one per result line: the table `fit` uses for its verdict and error band)")
    parser.add_argument("--include-fake", action="store_true", help="also fit simulated (backend fake) runs")


def _expand(paths: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    return out


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from profiler.results import OutputError, check_directory, read_records

    console = Console(stderr=True, soft_wrap=True)
    files = _expand(args.results)
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        console.print(f"[red]error:[/red] no such results file: {escape(missing[0])}", highlight=False)
        return 2
    try:  # before any work: an unwritable --out / --figures is bad input
        for what, d in (("--out", args.out), ("--figures", args.figures)):
            if d is not None:
                check_directory(d, what)
    except OutputError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return 2
    records = read_records(files, warn=lambda msg: console.print(f"[yellow]warning:[/yellow] {escape(msg)}",
                                                                 highlight=False))
    samples, skipped = to_samples(records, args.estimator, include_fake=args.include_fake)
    for why in skipped[:5]:
        console.print(f"[yellow]skipped[/yellow] {escape(why)}", highlight=False)
    if len(skipped) > 5:
        console.print(f"[yellow]skipped[/yellow] {len(skipped) - 5} more", highlight=False)
    if not samples:
        fake = sum(1 for r in records if r.get("backend") == "fake")
        why = f" ({fake} are simulated: add --include-fake to fit them)" if fake and not args.include_fake else ""
        console.print(f"[red]error:[/red] no measured status-ok runs to fit among {len(records)} lines in "
                      f"{len(files)} file(s){why}", highlight=False)
        return 1
    rows = fit_rows(samples, args.estimator)
    written = write_tables(rows, Path(args.out), [str(p) for p in files])
    if args.figures:
        written += write_figures(rows, Path(args.figures))
    for r in rows:
        if r.target in ("peak_allocated", "nvml_peak"):
            console.print(f"{r.device_slug} {r.regime:8s} {r.target:15s} n={r.n_runs:<3d} a={r.a:.3f} "
                          f"b={r.b / 2**20:.1f} MiB  MAPE {fmt_pct(r.mape_pct)} (raw {fmt_pct(r.raw_mape_pct)}, "
                          f"LOMO {fmt_pct(r.lomo_mape_pct)}, LOSO {fmt_pct(r.loso_mape_pct)})", highlight=False)
    console.print(escape(f"{len(samples)} runs -> " + ", ".join(map(str, written))), highlight=False)
    return 0
