"""Write docs/consistency-full.md: the summary of a full-grid sweep of scripts/grid_consistency.py, from its rows.

The sweep (`grid_consistency.py --full --order 0 --shard I/N --json results/consistency/full_standins.IofN.jsonl`)
appends one row per finished point; this page counts what finished, against every valid point of the grid, and
says what remains and how to resume. With `--recompute-components` the components figure of each row is
recomputed on the checked-out code (simulate's figure is the sweep's: it does not change unless simulate does),
so a fix to the formulas shows without simulating again.

    python scripts/grid_full_page.py results/consistency/full_standins.*of2.jsonl --recompute-components \\
        --out docs/consistency-full.md
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("grid_consistency", HERE / "grid_consistency.py")
gc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gc)

FACTORS = ("family", "regime", "parallel", "seq", "batch", "ckpt", "autocast")
RESUME = ("nice -n 19 python scripts/grid_consistency.py --full --order 0 --shard {i}/{n} "
          "--json results/consistency/full_standins.{i}of{n}.jsonl")


def recompute(rows: list[dict]) -> None:
    """Components' allocated part (and the difference) of each simulated row, on the checked-out code."""
    from profiler.formulas import estimate

    for r in rows:
        if r.get("simulate") is None or not r.get("components"):
            continue
        est = estimate("components", gc.config_of({k: r[k] for k in gc.GRID}))
        r["components_sweep"] = r["components"]
        r["components"] = est.total - est.get("overhead")
        r["pct"] = round(100 * (r["components"] - r["simulate"]) / r["simulate"], 2)


def kind(v: str) -> str:
    """The verdict without its detail: agrees / known / DIFFERS / estimate only / simulate fails / RAISES."""
    if v.startswith("known (simulate fails)"):
        return "simulate fails (known)"
    return v.split(":")[0]


def table(df, by: str) -> str:
    """Counts of each verdict per value of one factor, with the median and worst |difference|."""
    import pandas as pd

    t = pd.crosstab(df[by], df["verdict"])
    sim = df[df["pct"].notna()]
    t["median abs diff %"] = sim.groupby(by)["pct"].apply(lambda s: f"{s.abs().median():.1f}")
    t["worst diff %"] = sim.groupby(by)["pct"].apply(lambda s: f"{s.loc[s.abs().idxmax()]:+.1f}")
    t = t.fillna("–")
    head = f"| {by} | " + " | ".join(map(str, t.columns)) + " |"
    lines = [head, "|" + "---|" * (len(t.columns) + 1)]
    lines += [f"| {idx} | " + " | ".join(map(str, rec)) + " |" for idx, rec in zip(t.index, t.values, strict=True)]
    return "\n".join(lines)


def page(rows: list[dict], total: int, shards: int, recomputed: bool, commit: str) -> str:
    import pandas as pd

    known = gc.load_known()
    df = pd.DataFrame([{**{k: r[k] for k in (*FACTORS, "id")}, "pct": r.get("pct"),
                        "verdict": kind(gc.verdict(r, known)), "seconds": r.get("seconds"),
                        "same_as": r.get("same_as"), "finished": r.get("finished")} for r in rows])
    counts = df["verdict"].value_counts().to_dict()
    simulated = df[df["seconds"].fillna(0) > 0.5]["seconds"]
    stamps = sorted(t for t in df["finished"].dropna())
    done, left = len(rows), total - len(rows)
    complete = "The full grid **completed**." if left == 0 else (
        f"The full grid did **not** complete: **{done} of {total:,} points ran** ({100 * done / total:.1f} %); "
        f"{left:,} remain.")
    rate = ""
    if len(stamps) > 1:
        t0, t1 = (datetime.fromisoformat(s) for s in (stamps[0], stamps[-1]))
        per = (t1 - t0).total_seconds() / (len(stamps) - 1)
        rate = (f" The rows that carry a finish time ({len(stamps)}) came at {per:.1f} "
                f"s of wall time per point over {shards} processes ({stamps[0]} to {stamps[-1]} UTC).")
    med, mean = (statistics.median(simulated), simulated.mean()) if len(simulated) else (0, 0)
    worst = df[df["verdict"].isin(["DIFFERS", "known"])].assign(a=lambda d: d["pct"].abs()).sort_values(
        "a", ascending=False)
    out = [
        "# components vs simulate: the full grid (2-layer stand-ins)",
        "",
        "Every valid point of the grid of scripts/grid_consistency.py (docs/consistency.md describes the grid, the "
        "stand-ins and the tolerance; the CI test simulates an all-pairs sample of it). Rows: "
        f"results/consistency/full_standins.*of{shards}.jsonl, one per finished point, appended as the sweep ran.",
        "",
        f"Written by `python scripts/grid_full_page.py {' '.join(sys.argv[1:])}` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit {commit}. CUDA target; components = its allocated part; "
        "simulate = steady peak allocated (rank 0 under ddp/fsdp2); tolerance 5 %. "
        + ("components was **recomputed** on that commit for every simulated row (the sweep's own figure is kept "
           "in the rows as `components_sweep`); simulate's figures are the sweep's." if recomputed else
           "Both figures are the sweep's."),
        "",
        "## How much ran",
        "",
        f"{complete} The points ran in one fixed shuffled order (`--order 0`), so the rows that finished are a "
        "uniform random sample of the whole grid, not its first families.",
        "",
        f"- Time per point (simulation only, the row's `seconds`, {len(simulated)} simulated rows): median "
        f"{med:.1f} s, mean {mean:.1f} s, "
        "on the shared 2-core machine under `nice -n 19` (other engineers' tests took most of the CPU)." + rate,
        f"- Points answered without a simulation: {int(df['same_as'].notna().sum())} repeats of a config already "
        "simulated (seq capped at the model's positions) and "
        f"{int((df['verdict'] == 'estimate only').sum())} CPU-offload points (no simulation exists for them).",
        "- To resume (each process skips the points its file already holds and appends; no line is rewritten):",
        "",
        "```",
        *[RESUME.format(i=i, n=shards) for i in range(shards)],
        "```",
        "",
        "## Verdicts",
        "",
        ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
        "",
        "`DIFFERS`: beyond 5 % and not in tests/formulas/known_differences.yaml (that file lists the points of the "
        "sampled grid only; the full grid's differing points are counted here, by factor, not listed one by one "
        "there). `known`: listed there with a cause.",
        "",
    ]
    for f in FACTORS:
        out += [f"### By {f}", "", table(df, f), ""]
    out += ["## The 40 largest differences", "", "| point | diff | verdict |", "|---|---|---|"]
    out += [f"| {r.id} | {r.pct:+.1f}% | {r.verdict} |" for r in worst.head(40).itertuples()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", nargs="+", help="the sweep's JSON-lines files")
    ap.add_argument("--recompute-components", action="store_true",
                    help="recompute components on the checked-out code (simulate's figures stay the sweep's)")
    ap.add_argument("--out", default="docs/consistency-full.md")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    saved = gc.read_rows(args.rows)
    points = gc.sweep_order(gc.full_grid(), 0)
    rows = [saved[gc.point_id(p)] for p in points if gc.point_id(p) in saved]
    if args.recompute_components:
        recompute(rows)
    shards = max(len(args.rows), 1)
    Path(args.out).write_text(page(rows, len(points), shards, args.recompute_components, gc._commit()))
    print(f"{args.out}: {len(rows)} of {len(points)} points", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
