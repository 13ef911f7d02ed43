"""The validation report: median and worst |error| by group, the CSV, the picture, the CI baseline, the README block.

Groups: source, single vs multi-GPU, dense vs MoE, current HF / current other / old stack, and all rows; each
over every row that ran ("all") and over the rows with no setting we cannot express ("expressible"). Two more
lines compare #22's reserved rules on the rows measured as reserved or nvidia-smi whose predictor replayed the
allocator: the replay, and the rule it replaced (allocated + 3 %), over the same rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

GROUPINGS = [("all", None), ("source", "group"), ("GPUs", "gpu_class"), ("model", "moe"), ("stack", "era_group")]
MISS_PCT = 25.0  # a row off by more than this needs a stated cause (validation/published.yaml `cause`)
BASELINE_SLACK_PCT = 2.0  # CI: the fast subset's median |error| may rise this many points above the baseline


def ran(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["error_pct"].notna()]


def _stats(part: pd.DataFrame) -> tuple[int, float | None, float | None, str]:
    if part.empty:
        return 0, None, None, ""
    worst = part.loc[part["abs_error_pct"].idxmax()]
    return len(part), float(part["abs_error_pct"].median()), float(worst["abs_error_pct"]), str(worst["id"])


REPLAY_GROUPING = "reserved rule (#22)"
REPLAY_VALUES = ("allocator replay", "allocated + 3 %")


def replay_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of #22's comparison: ran, measured as reserved or nvidia-smi, with the old rule's error beside."""
    done = ran(df)
    return done[done["error_allowance_pct"].notna()] if "error_allowance_pct" in done else done.iloc[0:0]


def _replay_lines(df: pd.DataFrame) -> list[dict]:
    """#22: median and worst |error| of the replay and of allocated + 3 % over the same rows."""
    part = replay_rows(df)
    lines: list[dict] = []
    if part.empty:
        return lines  # no row measured as reserved or nvidia-smi was replayed (or a CSV from before #22)
    for value, col in zip(REPLAY_VALUES, ("error_pct", "error_allowance_pct"), strict=True):
        p = part.assign(abs_error_pct=part[col].abs())
        n, med, worst, wid = _stats(p)
        ne, mede, worste, wide = _stats(p[p["expressible"].astype(bool)])
        lines.append({"grouping": REPLAY_GROUPING, "value": value, "rows": n, "ran": n, "median_abs_pct": med,
                      "worst_abs_pct": worst, "worst_id": wid, "expressible_ran": ne,
                      "expressible_median_abs_pct": mede, "expressible_worst_abs_pct": worste,
                      "expressible_worst_id": wide})
    return lines


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One line per (grouping, value): n, median and worst |error| over all rows that ran and over expressible ones;
    then #22's two lines (_replay_lines)."""
    done = ran(df)
    lines = []
    for label, col in GROUPINGS:
        values = ["all rows"] if col is None else sorted(df[col].dropna().unique())
        for v in values:
            part = done if col is None else done[done[col] == v]
            n, med, worst, wid = _stats(part)
            ne, mede, worste, wide = _stats(part[part["expressible"].astype(bool)])
            total = len(df) if col is None else int((df[col] == v).sum())
            lines.append({"grouping": label, "value": v, "rows": total, "ran": n, "median_abs_pct": med,
                          "worst_abs_pct": worst, "worst_id": wid, "expressible_ran": ne,
                          "expressible_median_abs_pct": mede, "expressible_worst_abs_pct": worste,
                          "expressible_worst_id": wide})
    return pd.DataFrame([*lines, *_replay_lines(df)])


def median_abs(df: pd.DataFrame) -> float | None:
    done = ran(df)
    return None if done.empty else float(done["abs_error_pct"].median())


def uncaused_misses(df: pd.DataFrame) -> list[str]:
    """Rows off by more than MISS_PCT with no stated cause."""
    done = ran(df)
    bad = done[(done["abs_error_pct"] > MISS_PCT) & done["cause"].isna()]
    return list(bad["id"])


def _f(x: float | None) -> str:
    return "-" if x is None or pd.isna(x) else f"{x:.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None or pd.isna(x) else f"{x:.1f} %"


def render(df: pd.DataFrame, summ: pd.DataFrame, console) -> None:
    """The rich tables: every row, then the summary by group."""
    from rich.table import Table

    t = Table(title="published vs predicted (per GPU; error = (predicted - published) / published)")
    for col, just in (("row", "left"), ("metric", "left"), ("published", "right"), ("predicted", "right"),
                      ("error %", "right"), ("alloc. +3 % error", "right"), ("predictor", "left"),
                      ("SDPA rules", "left"), ("not expressed / not run", "left")):
        t.add_column(col, justify=just, overflow="fold")
    for r in df.itertuples():
        metric = r.metric if r.metric != "not-stated" else "not stated (vs reserved)"
        pub = "OOM" if pd.isna(r.published) else f"{r.published:g} {r.unit}"
        old = getattr(r, "error_allowance_pct", None)
        old = f"{old:+.1f}" if old is not None and pd.notna(old) else ""
        arch = getattr(r, "gpu_arch", None)
        arch = arch if isinstance(arch, str) else ""
        arch = "sm80 (GPU cc unknown)" if arch == "auto" else arch
        arch = arch if getattr(r, "predictor", None) == "simulate" else ""  # components has no kernel rules
        if pd.notna(r.error_pct):
            pred, err = f"{r.predicted:.2f} {r.unit}", f"{r.error_pct:+.1f}"
            why = r.not_expressed or ""
            if r.abs_error_pct > MISS_PCT:
                why = "; ".join(filter(None, [why, f"cause: {r.cause}" if isinstance(r.cause, str)
                                              else "cause: NOT STATED"]))
            pred_by = r.predictor
        else:
            pred, err, pred_by = "-", "-", "-"
            why = f"not run: {r.not_run}" if isinstance(r.not_run, str) else f"failed: {r.error}"
        t.add_row(r.id, metric, pub, pred, err, old, pred_by, arch, why)
    console.print(t)
    s = Table(title="|error| by group: median and worst, over every row that ran / over the expressible rows")
    for col in ("grouping", "value", "rows", "ran", "median %", "worst % (row)", "expressible", "median %",
                "worst % (row)"):
        s.add_column(col, justify="left" if col in ("grouping", "value") else "right")
    for r in summ.itertuples():
        s.add_row(r.grouping, str(r.value), str(r.rows), str(r.ran), _f(r.median_abs_pct),
                  f"{_f(r.worst_abs_pct)} ({r.worst_id})" if r.ran else "-", str(r.expressible_ran),
                  _f(r.expressible_median_abs_pct),
                  f"{_f(r.expressible_worst_abs_pct)} ({r.expressible_worst_id})" if r.expressible_ran else "-")
    console.print(s)
    part = replay_rows(df)
    if not part.empty:
        rep_, old = (summ[(summ["grouping"] == REPLAY_GROUPING) & (summ["value"] == v)].iloc[0] for v in REPLAY_VALUES)
        console.print(f"#22, the {len(part)} rows measured as reserved or nvidia-smi with a replay: median |error| "
                      f"{_pct(rep_.median_abs_pct)} with the allocator replay, {_pct(old.median_abs_pct)} with "
                      f"allocated + 3 % (expressible: {rep_.expressible_ran} rows, "
                      f"{_pct(rep_.expressible_median_abs_pct)} vs {_pct(old.expressible_median_abs_pct)})")


def plot(df: pd.DataFrame, path: Path) -> None:
    """Predicted vs published (GiB, log-log), y = x and a ±10 % band, coloured by source; hollow: not expressible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = ran(df)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    pub = done["published_bytes"] / 2**30
    pred = done["predicted_bytes"] / 2**30
    lo, hi = max(0.5, min(pub.min(), pred.min()) / 1.3), max(pub.max(), pred.max()) * 1.3
    xs = [lo, hi]
    ax.fill_between(xs, [x * 0.9 for x in xs], [x * 1.1 for x in xs], color="0.85", label="±10 %")
    ax.plot(xs, xs, color="0.3", lw=1, label="y = x")
    colours = plt.get_cmap("tab10")
    for i, (g, part) in enumerate(done.groupby("group")):
        c = colours(i)
        exp = part["expressible"].astype(bool)
        for mask, face, lab in ((exp, c, f"{g}"), (~exp, "none", f"{g} (not expressible)")):
            sub = part[mask]
            if not sub.empty:
                ax.scatter(sub["published_bytes"] / 2**30, sub["predicted_bytes"] / 2**30, s=36, facecolors=face,
                           edgecolors=c, linewidths=1.2, label=lab)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("published per GPU (GiB; measured by the source)")
    ax.set_ylabel("predicted per GPU (GiB; simulate / components, in the source's metric)")
    ax.set_title(f"Predictions vs published GPU measurements ({len(done)} rows)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def baseline_check(df: pd.DataFrame, path: Path) -> tuple[bool, str]:
    """(ok, one line): the median |error| against the committed baseline, allowed BASELINE_SLACK_PCT more."""
    base = json.loads(path.read_text())
    now = median_abs(df)
    ref = float(base["median_abs_error_pct"])
    if now is None:
        return False, f"baseline: no row of the subset ran (baseline median {ref:.1f} %)"
    ok = now <= ref + BASELINE_SLACK_PCT
    verdict = "ok" if ok else f"FAILED: more than {BASELINE_SLACK_PCT:g} points above"
    return ok, (f"baseline: median |error| {now:.1f} % vs {ref:.1f} % in {path} ({verdict})")


def baseline_data(df: pd.DataFrame, subset: str, meta: dict) -> dict:
    done = ran(df)
    return {"subset": subset, "median_abs_error_pct": round(median_abs(df) or 0.0, 2),
            "rows": {r.id: r.error_pct for r in done.itertuples()}, "written": meta}


def markdown(df: pd.DataFrame, meta: dict) -> str:
    """The README block: what was compared, the summary, and every miss over MISS_PCT with its cause."""
    summ = summary(df)
    done = ran(df)
    failed = df[df["error"].notna()]
    fail_text = "" if failed.empty else (f", {len(failed)} failed (" + "; ".join(
        f"{r.id}: {r.error}" for r in failed.itertuples()) + ")")
    n_not_run = int(df["not_run"].notna().sum())
    lines = [f"Predictions against {len(df)} published GPU-memory figures measured by others "
             f"(validation/published.yaml; {len(done)} predicted, {n_not_run} not run, each with its reason in the "
             f"table{fail_text}). Written by `scripts/validation_report.py` from `python -m profiler validate` "
             f"on {meta.get('date', '?')}, commit {meta.get('commit', '?')}. Error = (predicted - published) / "
             f"published, per GPU; *expressible* = no setting of the source our config cannot express.", "",
             "| group | rows | predicted | median \\|error\\| | worst | expressible | median \\|error\\| | worst |",
             "|---|---:|---:|---:|---|---:|---:|---|"]
    for r in summ.itertuples():
        name = "all rows" if r.grouping == "all" else f"{r.grouping}: {r.value}"
        worst = f"{_f(r.worst_abs_pct)} % ({r.worst_id})" if r.ran else "-"
        worste = f"{_f(r.expressible_worst_abs_pct)} % ({r.expressible_worst_id})" if r.expressible_ran else "-"
        lines.append(f"| {name} | {r.rows} | {r.ran} | {_pct(r.median_abs_pct)} | {worst} | {r.expressible_ran} | "
                     f"{_pct(r.expressible_median_abs_pct)} | {worste} |")
    misses = done[done["abs_error_pct"] > MISS_PCT].sort_values("abs_error_pct", ascending=False)
    if not misses.empty:
        lines += ["", f"Misses over {MISS_PCT:g} % and their causes:", "",
                  "| row | published | predicted | error | cause |", "|---|---:|---:|---:|---|"]
        for r in misses.itertuples():
            cause = r.cause if isinstance(r.cause, str) else "no cause stated yet"
            lines.append(f"| {r.id} | {r.published:g} {r.unit} | {r.predicted:.1f} {r.unit} | {r.error_pct:+.1f} % "
                         f"| {cause} |")
    return "\n".join(lines)
