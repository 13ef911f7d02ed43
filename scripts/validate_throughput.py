"""Published throughputs vs the time model: prints one line per row of validation/throughput.yaml and the median error.

    python scripts/validate_throughput.py [ROWS.yaml] [--fit] [--resimulate] [--runs results/runs/*.jsonl]

--fit refits the efficiencies on the rows (profiler/data/timing_efficiency.csv, timing_fit_rows.csv) first.
Each row's config is simulated once (minutes for an 8B model at seq 8192) and its counted work cached in
validation/throughput_work.json; --resimulate redoes it. --runs adds our own timed CUDA runs (`python -m profiler
run` result files) as rows: once a GPU is lent, they refine the fit. Exit 2 on bad input (one line), 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", nargs="?", default=None, help="rows file (default validation/throughput.yaml)")
    ap.add_argument("--fit", action="store_true", help="refit the efficiencies on the rows first")
    ap.add_argument("--resimulate", action="store_true", help="simulate every row again (ignore the cache)")
    ap.add_argument("--runs", nargs="+", metavar="JSONL", help="own timed CUDA runs to add as rows (results/runs/)")
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from profiler.config import ConfigError
    from profiler.measure.quiet import quiet_libraries
    from profiler.timing.validate import DEFAULT_ROWS, median_abs, out_of_sample, refit, validate_throughput

    quiet_libraries()
    path = args.rows or DEFAULT_ROWS
    say = lambda m: print(f"... {m}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.fit:
            eff = refit(path, args.resimulate, say, args.runs)
            gd = f" (GDDR GPUs: {eff.matmul_gddr:.2f})" if eff.matmul_gddr is not None else ""
            print(f"fitted: e_matmul {eff.matmul:.2f}{gd}, e_memory {eff.memory:.2f}, e_link {eff.link:.2f} on "
                  f"{eff.n_rows} rows; leave-one-out median |error| {eff.loo_median_pct:.1f} %, p90 "
                  f"{eff.loo_p90_pct:.1f} %")
        df = validate_throughput(path, resimulate=args.resimulate and not args.fit, progress=say, runs=args.runs)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = Console(width=200)
    t = Table(title="tokens/s per GPU: published vs estimated (simulate + time model; fitted efficiencies)")
    for col in df.columns:
        t.add_column(col, justify="left" if col in ("id", "gpu", "bound") else "right")
    for _, r in df.iterrows():
        t.add_row(*(str(v) for v in r.values))
    c.print(t)
    fitted = list(df["fit"])
    df["out_of_sample_error_pct"] = out_of_sample(df)
    c.print(f"median |error| on the {len(df)} published rows, out of sample (fitted rows: leave-one-out; the others: "
            f"the fit, which never saw them): {median_abs(df, 'out_of_sample_error_pct'):.1f} %")
    c.print(f"  the {sum(fitted)} fitted rows: leave-one-out {median_abs(df, 'loo_error_pct', fitted):.1f} %, "
            f"in-sample {median_abs(df, 'error_pct', fitted):.1f} %; the {len(df) - sum(fitted)} rows not fitted on "
            f"(`fit: false`): {median_abs(df, 'error_pct', [not f for f in fitted]):.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
