"""Measured vs every estimator (the `compare` command's tables and plots).

For every measured run: peak_allocated, peak_reserved, nvml_peak and each estimator's prediction with its
signed error % against the chosen measurement; a summary per estimator x regime (MAPE, worst case); the
per-component comparison where the run recorded a breakdown; markdown + CSV; matplotlib PNGs.

Measurement compared against (`--against auto`): NVML peak minus the pre-run baseline where recorded
(what a user sees, CUDA context included), else peak_reserved, else peak_allocated (CPU tracker runs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from pydantic import ValidationError

from profiler.categories import TRACKED, pick_unit
from profiler.config import RunConfig
from profiler.formulas import ESTIMATORS, NotApplicable
from profiler.formulas.components import components_estimate
from profiler.schema import RunRecord

PHASES = ("forward", "backward", "optimizer_step")
AGAINST = ("auto", "allocated", "reserved", "nvml")


def kernel_of(rec: RunRecord) -> str | None:
    """Our kernel name for the run's recorded attention kernel (None: let the estimator decide)."""
    k = (rec.attention_kernel or "").lower()
    for name, keys in (
        ("flash", ("flash",)),
        ("efficient", ("efficient", "mem_eff")),
        ("math", ("math",)),
        ("eager", ("eager",)),
    ):
        if any(x in k for x in keys):
            return name
    return None


def measured(rec: RunRecord, against: str) -> tuple[int | None, str]:
    p, nv = rec.peaks, rec.nvml
    nvml = nv.peak_used_bytes - nv.baseline_used_bytes if nv else None
    reserved = p.peak_reserved_bytes if p else None
    allocated = p.peak_allocated_bytes if p else None
    if against == "nvml":
        return nvml, "nvml"
    if against == "reserved":
        return reserved, "reserved"
    if against == "allocated":
        return allocated, "allocated"
    for v, name in ((nvml, "nvml"), (reserved, "reserved"), (allocated, "allocated")):
        if v is not None:
            return v, name
    return None, "-"


def predictions(rec: RunRecord) -> dict[str, object]:
    """estimator -> Estimate (or None where not applicable) for the run's config."""
    cfg = RunConfig.model_validate(rec.config)
    out: dict[str, object] = {}
    for name, fn in ESTIMATORS.items():
        try:
            out[name] = components_estimate(cfg, kernel=kernel_of(rec)) if name == "components" else fn(cfg)
        except NotApplicable:
            out[name] = None
    return out


def err_pct(pred: int, meas: int) -> float:
    return 100.0 * (pred - meas) / meas


def simulated_peaks(records: list[RunRecord]) -> dict[str, int]:
    """config hash -> simulated peak_allocated of the ok fake runs (the last one per hash wins)."""
    return {r.config_hash: r.peaks.peak_allocated_bytes for r in records
            if r.backend == "fake" and r.status == "ok" and r.peaks is not None}


def compare_tables(records: list[RunRecord], against: str = "auto",
                   simulated: dict[str, int] | None = None) -> dict[str, pd.DataFrame]:
    """runs (one row per ok measured run), summary (estimator x regime) and components (per category).
    With `simulated` (config hash -> simulated peak), `simulate` is judged like an estimator."""
    rows, comp_rows = [], []
    unreadable = 0
    for rec in records:
        if rec.status != "ok" or rec.peaks is None or rec.backend == "fake":
            continue  # a simulation is a prediction, never a measurement
        try:
            cfg = RunConfig.model_validate(rec.config)
        except ValidationError:  # a line whose config this version cannot read: skipped, counted below
            unreadable += 1
            continue
        target, target_name = measured(rec, against)
        row = {
            "run_id": rec.run_id,
            "model": cfg.model.name,
            "regime": cfg.regime.label,
            "optimizer": cfg.optimizer.name,
            "dtype": cfg.model.dtype,
            "batch": cfg.train.batch_size,
            "seq_len": cfg.train.seq_len,
            "ckpt": cfg.train.gradient_checkpointing,
            "backend": rec.backend,
            "peak_allocated": rec.peaks.peak_allocated_bytes,
            "peak_reserved": rec.peaks.peak_reserved_bytes,
            "nvml_peak": rec.peaks.nvml_peak_bytes,
            "against": target_name,
            "measured": target,
        }
        preds = predictions(rec)
        for name, est in preds.items():
            row[f"{name}"] = est.total if est is not None else None
            row[f"{name}_err_pct"] = (
                round(err_pct(est.total, target), 2) if est is not None and target else None
            )
        if simulated is not None:
            sim = simulated.get(rec.config_hash)
            row["simulate"] = sim
            row["simulate_err_pct"] = round(err_pct(sim, target), 2) if sim is not None and target else None
        rows.append(row)
        comp = preds.get("components")
        phases = [ph for ph in rec.phases if ph.breakdown and not ph.warmup]
        if comp is not None and phases:
            top = max(phases, key=lambda ph: ph.peak_allocated_bytes)
            for cat in TRACKED:
                m = top.breakdown.get(cat.value)
                if m is None:
                    continue
                pr = (
                    comp.details.get(f"{top.phase}:{cat.value}", 0)
                    if top.phase in PHASES
                    else comp.get(cat.value)
                )
                comp_rows.append(
                    {
                        "run_id": rec.run_id,
                        "phase": top.phase,
                        "category": cat.value,
                        "measured": m,
                        "predicted": pr,
                        "err_pct": round(err_pct(pr, m), 2) if m else None,
                    }
                )
    if unreadable:
        print(f"warning: skipped {unreadable} run(s) whose config this version cannot read", file=sys.stderr)
    runs = pd.DataFrame(rows)
    for col in ("peak_allocated", "peak_reserved", "nvml_peak", "measured", *judged(runs)):
        if col in runs.columns:  # bytes stay integers, also in columns with gaps (nullable Int64)
            runs[col] = runs[col].astype("Int64")
    summary_rows = []
    if not runs.empty:
        for name in judged(runs):
            col = f"{name}_err_pct"
            for regime, grp in runs.groupby("regime", sort=True):
                errs = grp[col].dropna()
                if errs.empty:
                    continue
                worst = errs.iloc[errs.abs().argmax()]
                summary_rows.append(
                    {
                        "estimator": name,
                        "regime": regime,
                        "runs": len(errs),
                        "mape": round(errs.abs().mean(), 2),
                        "mean_signed": round(errs.mean(), 2),
                        "worst": round(float(worst), 2),
                    }
                )
    return {"runs": runs, "summary": pd.DataFrame(summary_rows), "components": pd.DataFrame(comp_rows)}


def judged(runs: pd.DataFrame) -> list[str]:
    """The estimators with a column in `runs` (simulate only when simulated lines were given)."""
    return [n for n in (*ESTIMATORS, "simulate") if n in runs.columns]


def _md(df: pd.DataFrame) -> str:
    if df.empty:
        return "(none)\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += [
        "| " + " | ".join("" if pd.isna(v) else str(v) for v in r) + " |" for r in df.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


def write_outputs(
    tables: dict[str, pd.DataFrame], out: Path, records: list[RunRecord], plots: bool = True
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df in tables.items():
        p = out / f"{name}.csv"
        df.to_csv(p, index=False)
        written.append(p)
    md = [
        "# Measured vs estimated memory",
        "",
        "Bytes are integers; errors are signed % of the measurement named in `against`.",
        "",
    ]
    if any(r.backend == "cpu" for r in records):
        md += ["**Some measurements are CPU tensor-tracker figures** (backend `cpu`): they check the estimators'"
               " self-consistency on tiny models, not their accuracy on a GPU.", ""]
    for name in ("summary", "runs", "components"):
        md += [f"## {name}", "", _md(tables[name])]
    figures = plot(tables["runs"], records, out) if plots and not tables["runs"].empty else []
    if figures:
        md += ["## figures", ""] + [f"![{f.stem}]({f.name})\n" for f in figures]
    p = out / "compare.md"
    p.write_text("\n".join(md))
    written.append(p)
    return written + figures


def plot(runs: pd.DataFrame, records: list[RunRecord], out: Path) -> list[Path]:
    """Predicted vs measured per estimator, and memory vs batch / seq_len per config group; units scale with
    the data, titles say in words what was held fixed and what varied, coinciding lines are named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name in judged(runs):
        sub = runs.dropna(subset=[name, "measured"])
        if sub.empty:
            continue
        unit, div = pick_unit(max(sub["measured"].max(), sub[name].max()))
        fig, ax = plt.subplots(figsize=(5, 5))
        for regime, grp in sub.groupby("regime"):
            ax.scatter(grp["measured"] / div, grp[name] / div, label=regime)
        hi = max(sub["measured"].max(), sub[name].max()) / div * 1.05
        ax.plot([0, hi], [0, hi], "k--", lw=1, label="prediction = measurement")
        ax.set(xlabel=f"measured ({unit})", ylabel=f"predicted by {name} ({unit})",
               title=f"{name}: predicted vs measured peak")
        ax.legend(fontsize=7)
        p = out / f"scatter_{name}.png"
        fig.savefig(p, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(p)
    by_id = {r.run_id: r for r in records}
    keys = ["model", "regime", "optimizer", "dtype", "ckpt"]
    for axis, other in (("seq_len", "batch"), ("batch", "seq_len")):
        for gkey, grp in runs.groupby(keys + [other]):
            if grp[axis].nunique() < 2:
                continue
            grp = grp.sort_values(axis)
            base = RunConfig.model_validate(by_id[grp["run_id"].iloc[0]].config)
            xs = sorted(set(grp[axis]))
            lines: dict[str, list[int]] = {}
            for name, fn in ESTIMATORS.items():
                ys = []
                for x in xs:
                    d = base.model_dump()
                    d["train"]["batch_size" if axis == "batch" else "seq_len"] = int(x)
                    try:
                        ys.append(fn(RunConfig.model_validate(d)).total)
                    except NotApplicable:
                        break
                if len(ys) == len(xs):
                    lines[name] = ys
            unit, div = pick_unit(max([grp["measured"].max()] + [max(v) for v in lines.values()]))
            fig, ax = plt.subplots(figsize=(6.5, 4.2))
            ax.plot(grp[axis], grp["measured"] / div, "ko", ms=7, label="measured", zorder=5)
            seen: dict[tuple, str] = {}
            for i, (name, ys) in enumerate(lines.items()):
                same = seen.setdefault(tuple(ys), name)
                label = name if same == name else f"{name} (same as {same})"
                ax.plot(xs, [y / div for y in ys], ["-", "--", ":", "-."][i % 4], marker="os^vD<>"[i % 7], ms=4,
                        label=label)
            model, regime, optimizer, dtype, ckpt, fixed = gkey
            what = "sequence length" if axis == "seq_len" else "batch size"
            held = f"batch {fixed}" if axis == "seq_len" else f"seq {fixed}"
            ax.set(xlabel=what, ylabel=f"peak memory ({unit})",
                   title=f"{model} · {regime} · {optimizer} · {dtype}"
                   + (" · checkpointing" if bool(ckpt) else "") + f" · {held}: memory vs {what}")
            ax.title.set_fontsize(9)
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside: never over a line
            ax.grid(alpha=0.3)
            slug = "-".join(str(k) for k in gkey).replace("/", "_")
            p = out / f"vs_{axis}_{slug}.png"
            fig.savefig(p, dpi=100, bbox_inches="tight")
            plt.close(fig)
            written.append(p)
    return written
