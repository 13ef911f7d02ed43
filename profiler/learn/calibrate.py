"""Calibration (the logic of `calibrate`): fit measured ≈ a · predicted + b per GPU, regime and target.

Targets: each tracked component (weights, gradients, optimizer, activations, temporaries: the tracker's
breakdown at the steady-state peak, i.e. the highest phase of the last step) against the estimator's
component, and the whole-run peaks (peak_allocated, peak_reserved, nvml_peak − NVML baseline) against the
estimator's total. The fit is a Huber-weighted least squares on relative residuals (runs span MiB to tens
of GiB; relative error is what users read), by iteratively reweighted least squares in numpy.

Honest generalisation: besides the in-sample R², MAPE and worst error, every row carries the error of
leave-one-model-out and leave-one-seq-len-out cross-validation (each fold fitted without the held-out
group). Writes results/calibration/<gpu-slug>.csv (read back by `load_calibration`) and <gpu-slug>.md, named
from a sanitised slug (a crafted device_slug cannot name a path), with Markdown in strings escaped.
This is the only place where measurements flow back into predictions.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from profiler.categories import TRACKED
from profiler.config import RunConfig, format_validation_error
from profiler.results import RESULTS_DIR, slugify

COMPONENTS = tuple(c.value for c in TRACKED)  # weights, gradients, optimizer, activations, temporaries
TOTALS = ("peak_allocated", "peak_reserved", "nvml_peak")
TARGETS = COMPONENTS + TOTALS
CALIBRATION_DIR = RESULTS_DIR / "calibration"  # relative: under the working directory
CSV_FIELDS = ("device_slug", "device_name", "regime", "target", "estimator", "n_runs", "n_models",
              "n_seq_lens", "a", "b", "r2", "mape_pct", "worst_pct", "worst_run", "raw_mape_pct",
              "lomo_mape_pct", "loso_mape_pct", "note")


# ---------------------------------------------------------------- robust fit


@dataclass
class Fit:
    a: float
    b: float
    note: str = ""

    def predict(self, x: np.ndarray | float) -> np.ndarray | float:
        return self.a * x + self.b


def robust_fit(x: Sequence[float], y: Sequence[float], huber_k: float = 1.345, iters: int = 50) -> Fit:
    """y ≈ a·x + b, Huber IRLS on relative residuals (y − a·x − b)/y. With fewer than 2 distinct x,
    fit a only (b = 0); with every x = 0, fit b only (a = 1)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size == 0:
        raise ValueError("no runs to fit")
    floor = max(float(np.median(np.abs(y))) * 1e-3, 1.0)
    rel = 1.0 / np.maximum(np.abs(y), floor)  # residual scale: relative error
    if np.all(x == 0):
        return Fit(1.0, float(np.median(y)), "predicted 0 everywhere: b only (a = 1)")
    distinct = np.unique(x).size
    design = np.column_stack([x, np.ones_like(x)]) if distinct >= 2 else x[:, None]
    note = "" if distinct >= 2 else f"{distinct} distinct predicted value: a only (b = 0)"
    w = np.ones_like(x)
    beta = np.zeros(design.shape[1])
    for _ in range(iters):
        sw = np.sqrt(w) * rel
        new, *_ = np.linalg.lstsq(design * sw[:, None], y * sw, rcond=None)
        r = (y - design @ new) * rel
        scale = 1.4826 * float(np.median(np.abs(r - np.median(r))))
        converged = np.allclose(new, beta, rtol=1e-10, atol=0.0)
        beta = new
        if scale <= 1e-12 or converged:
            break
        cut = huber_k * scale
        w = np.where(np.abs(r) <= cut, 1.0, cut / np.maximum(np.abs(r), 1e-300))
    a = float(beta[0])
    b = float(beta[1]) if design.shape[1] == 2 else 0.0
    return Fit(a, b, note)


def ape(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Absolute percentage errors where the measured value is positive."""
    pred, y = np.asarray(pred, dtype=float), np.asarray(y, dtype=float)
    ok = y > 0
    return np.abs(pred[ok] - y[ok]) / y[ok] * 100.0


def r_squared(pred: np.ndarray, y: np.ndarray) -> float:
    y = np.asarray(y, dtype=float)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return float("nan") if ss_tot == 0 else 1.0 - float(np.sum((y - np.asarray(pred)) ** 2)) / ss_tot


# ---------------------------------------------------------------- cross-validation


@dataclass
class Fold:
    held_out: Any  # the group value (model name or seq_len) absent from train
    train: list[int]
    test: list[int]
    fit: Fit | None = None


@dataclass
class CVResult:
    mape: float  # over every held-out prediction
    folds: list[Fold]


def cv_folds(groups: Sequence[Any]) -> list[Fold]:
    """One fold per distinct group value: its runs are the test set, every other run the training set."""
    values = list(dict.fromkeys(groups))
    if len(values) < 2:
        return []
    return [Fold(v, [i for i, g in enumerate(groups) if g != v], [i for i, g in enumerate(groups) if g == v])
            for v in values]


def cross_validate(x: Sequence[float], y: Sequence[float], groups: Sequence[Any]) -> CVResult | None:
    """Leave-one-group-out: fit on the other groups, predict the held-out one. None with < 2 groups."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    folds = cv_folds(groups)
    if not folds:
        return None
    errors = []
    for f in folds:
        f.fit = robust_fit(x[f.train], y[f.train])
        errors.append(ape(f.fit.predict(x[f.test]), y[f.test]))
    errs = np.concatenate(errors)
    return CVResult(float(errs.mean()) if errs.size else float("nan"), folds)


# ---------------------------------------------------------------- records -> samples


@dataclass
class Sample:
    """One run reduced to what calibration needs: predicted and measured bytes per target."""

    device_slug: str
    device_name: str
    regime: str
    model: str
    seq_len: int
    label: str
    predicted: dict[str, float]
    measured: dict[str, float]


def measured_targets(rec: dict) -> dict[str, float]:
    """Measured bytes per target: components from the breakdown at the steady-state peak (the highest
    phase of the last non-warm-up step), totals from peaks (NVML minus its pre-run baseline)."""
    out: dict[str, float] = {}
    peaks = rec.get("peaks") or {}
    if peaks.get("peak_allocated_bytes") is not None:
        out["peak_allocated"] = peaks["peak_allocated_bytes"]
    if peaks.get("peak_reserved_bytes") is not None:
        out["peak_reserved"] = peaks["peak_reserved_bytes"]
    if peaks.get("nvml_peak_bytes") is not None:
        baseline = (rec.get("nvml") or {}).get("baseline_used_bytes") or 0
        out["nvml_peak"] = peaks["nvml_peak_bytes"] - baseline
    phases = [p for p in rec.get("phases") or [] if p.get("breakdown") and p.get("step") is not None]
    steady = [p for p in phases if not p.get("warmup")] or phases
    if steady:
        last = max(p["step"] for p in steady)
        top = max((p for p in steady if p["step"] == last), key=lambda p: p.get("peak_allocated_bytes") or 0)
        out.update({k: v for k, v in top["breakdown"].items() if k in COMPONENTS})
    return out


def group_of(cfg: RunConfig) -> str:
    """The calibration row group of a config: its regime label, and the parallel strategy with its world size
    where there is one ("full+fsdp2x8"), so a sharded run is never fitted with, or corrected as, a 1-GPU one."""
    pc = cfg.parallel
    return cfg.regime.label + (f"+{pc.strategy}x{pc.world_size}" if pc.strategy != "none" else "")


def _default_estimate(name: str, cfg: RunConfig):
    if name == "simulate":
        return simulated_estimate(cfg)
    from profiler.formulas import estimate

    return estimate(name, cfg)


def simulated_estimate(cfg: RunConfig):
    """`simulate` as the predictor to calibrate (`calibrate --estimator simulate`): the fake-tensor run's
    breakdown at its peak phase as the components and its peak allocated bytes as the total, the figure fit's
    verdict starts from, so the table's nvml_peak row is the error of fit's own prediction. bitsandbytes'
    8-bit step cannot run on fake tensors: such runs are skipped with the reason."""
    from profiler.formulas import Estimate
    from profiler.simulate.backend import simulate

    rec = simulate(cfg, primed=True)
    if rec["status"] != "ok":
        raise ValueError(f"simulate: {rec['status']}: {rec.get('error')}")
    top = max((p for p in rec["phases"] if p.get("step") is not None), key=lambda p: p["peak_allocated_bytes"])
    comps = {k: int(v) for k, v in (top.get("breakdown") or {}).items() if k in COMPONENTS}
    return Estimate("simulate", comps, int(rec["peaks"]["peak_allocated_bytes"]),
                    "profiler.simulate: the run's harness on fake tensors")


def to_samples(records: list[dict], estimator: str = "components", estimate_fn: Callable | None = None,
               include_fake: bool = False) -> tuple[list[Sample], list[str]]:
    """Status-ok records (the latest per device and config hash) with their predictions; skipped reasons."""
    estimate_fn = estimate_fn or _default_estimate
    latest: dict[tuple[str, str], dict] = {}
    skipped: list[str] = []
    for rec in records:
        if rec.get("status") != "ok" or (rec.get("backend") == "fake" and not include_fake):
            continue
        key = (slugify(rec["env"]["device_slug"]), rec["config_hash"])
        if key not in latest or str(rec.get("timestamp", "")) >= str(latest[key].get("timestamp", "")):
            latest[key] = rec
    samples = []
    for rec in latest.values():
        rid = rec.get("run_id", "?")
        try:
            cfg = RunConfig.model_validate(rec["config"])
        except ValidationError as exc:  # one line naming the field, not pydantic's dump
            hint = ("; a line of `track` holds the config it could infer: track(..., config=RunConfig) records "
                    "one calibrate can rebuild") if rec.get("source", "run") != "run" else ""
            skipped.append(_one_line(f"{rid}: config {_one_line(format_validation_error(exc), 200)}{hint}"))
            continue
        try:
            est = estimate_fn(estimator, cfg)
        except Exception as exc:  # noqa: BLE001 - one unreadable run must not stop the fit
            skipped.append(_one_line(f"{rid}: {estimator}: {type(exc).__name__}: {exc}"))
            continue
        predicted = {k: float(v) for k, v in est.components.items() if k in COMPONENTS}
        predicted.update({t: float(est.total) for t in TOTALS})
        gc = " gc" if cfg.train.gradient_checkpointing else ""
        label = (f"{cfg.model.name} {cfg.regime.label} {cfg.optimizer.name} b{cfg.train.batch_size} "
                 f"s{cfg.train.seq_len}{gc}")
        samples.append(Sample(slugify(rec["env"]["device_slug"]), rec["env"]["device_name"], group_of(cfg),
                              cfg.model.name, cfg.train.seq_len, label, predicted, measured_targets(rec)))
    return samples, skipped


def _one_line(text: str, limit: int = 400) -> str:
    """A skipped-run reason as one line of at most `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---------------------------------------------------------------- fitting tables


@dataclass
class Row:
    device_slug: str
    device_name: str
    regime: str
    target: str
    estimator: str
    n_runs: int
    n_models: int
    n_seq_lens: int
    a: float
    b: float
    r2: float
    mape_pct: float
    worst_pct: float
    worst_run: str
    raw_mape_pct: float
    lomo_mape_pct: float
    loso_mape_pct: float
    note: str = ""
    points: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (predicted, measured)


def fit_rows(samples: list[Sample], estimator: str = "components") -> list[Row]:
    rows = []
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.device_slug, s.regime), []).append(s)
    for (slug, regime), group in sorted(groups.items()):
        for target in TARGETS:
            use = [s for s in group if target in s.predicted and target in s.measured]
            if not use:
                continue
            x = np.array([s.predicted[target] for s in use])
            y = np.array([s.measured[target] for s in use])
            fit = robust_fit(x, y)
            pred = fit.predict(x)
            errs = np.abs(pred - y) / np.where(y > 0, y, np.nan) * 100.0
            worst = int(np.nanargmax(errs)) if np.any(np.isfinite(errs)) else 0
            raw = ape(x, y)
            lomo = cross_validate(x, y, [s.model for s in use])
            loso = cross_validate(x, y, [s.seq_len for s in use])
            e = ape(pred, y)
            rows.append(Row(
                slug, use[0].device_name, regime, target, estimator, len(use), len({s.model for s in use}),
                len({s.seq_len for s in use}), fit.a, fit.b, r_squared(pred, y),
                float(e.mean()) if e.size else float("nan"),
                float(errs[worst]) if np.isfinite(errs[worst]) else float("nan"), use[worst].label,
                float(raw.mean()) if raw.size else float("nan"),
                lomo.mape if lomo else float("nan"), loso.mape if loso else float("nan"), fit.note,
                list(zip(x.tolist(), y.tolist(), strict=True))))
    return rows


def _num(v: float, digits: int = 6) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


def write_tables(rows: list[Row], out_dir: Path, sources: Sequence[str] = ()) -> list[Path]:
    """<slug>.csv (machine-readable, bytes as numbers) and <slug>.md (for people) per device."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for slug in sorted({r.device_slug for r in rows}):
        mine = [r for r in rows if r.device_slug == slug]
        csv_path = out_dir / f"{slugify(slug)}.csv"  # never a path, whatever the results lines say
        with csv_path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_FIELDS)
            for r in mine:
                w.writerow([r.device_slug, r.device_name, r.regime, r.target, r.estimator, r.n_runs,
                            r.n_models, r.n_seq_lens, _num(r.a, 10), _num(r.b, 12), _num(r.r2),
                            _num(r.mape_pct),
                            _num(r.worst_pct), r.worst_run, _num(r.raw_mape_pct), _num(r.lomo_mape_pct),
                            _num(r.loso_mape_pct), r.note])
        md_path = out_dir / f"{slugify(slug)}.md"
        md_path.write_text(markdown(mine, sources))
        written += [csv_path, md_path]
    return written


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#!])")


def md_escape(text: object) -> str:
    """A string from a results line made inert in Markdown: one line, no table breaks, links, HTML, code."""
    one_line = " ".join(str(text).split())
    return _MD_SPECIAL.sub(r"\\\1", one_line.replace("&", "&amp;"))


def fmt_pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.1f}%"


def markdown(rows: list[Row], sources: Sequence[str] = ()) -> str:
    r0 = rows[0]
    lines = [f"# Calibration: {md_escape(r0.device_name)} (`{slugify(r0.device_slug)}`)", "",
             f"Estimator `{r0.estimator}`; fit measured ≈ a · predicted + b (Huber, relative residuals); "
             f"generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}"
             + (f" from {md_escape(', '.join(sources))}" if sources else "") + ".", "",
             "MAPE = mean |calibrated − measured| / measured; *raw* = the uncalibrated estimator; *LOMO* / "
             "*LOSO* = leave-one-model-out / leave-one-seq-len-out cross-validated MAPE (n/a with one "
             "model / one seq_len). b in MiB (2^20 bytes). nvml_peak is measured minus the pre-run NVML "
             "baseline.", ""]
    for regime in sorted({r.regime for r in rows}):
        mine = [r for r in rows if r.regime == regime]
        n = max(r.n_runs for r in mine)
        lines += [f"## {md_escape(regime)} ({n} runs)", "",
                  "| target | n runs | a | b (MiB) | R² | MAPE | worst error | worst run | raw MAPE | LOMO "
                  "| LOSO | note |", "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"]
        for r in mine:
            r2 = "n/a" if math.isnan(r.r2) else f"{r.r2:.3f}"
            cells = [r.target, str(r.n_runs), f"{r.a:.4g}", f"{r.b / 2**20:.1f}", r2, fmt_pct(r.mape_pct),
                     fmt_pct(r.worst_pct), md_escape(r.worst_run), fmt_pct(r.raw_mape_pct),
                     fmt_pct(r.lomo_mape_pct), fmt_pct(r.loso_mape_pct), md_escape(r.note)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_figures(rows: list[Row], fig_dir: Path) -> list[Path]:
    """Measured vs predicted (raw and calibrated), one PNG per device: a grid of panels (3 per row), one per
    target, each in a unit scaled to its data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from profiler.categories import pick_unit

    fig_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for slug in sorted({r.device_slug for r in rows}):
        mine = [r for r in rows if r.device_slug == slug]
        targets = [t for t in TARGETS if any(r.target == t for r in mine)]
        ncols = min(3, len(targets))
        nrows = -(-len(targets) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.9 * nrows), squeeze=False)
        for ax in axes.flat[len(targets):]:
            ax.set_visible(False)
        for ax, t in zip(axes.flat, targets):
            mine_t = [r for r in mine if r.target == t]
            top = max([max(max(p) for p in r.points) for r in mine_t if r.points] + [1])
            unit, div = pick_unit(top)
            for i, r in enumerate(mine_t):
                xs = np.array([p[0] for p in r.points]) / div
                ys = np.array([p[1] for p in r.points]) / div
                color = f"C{i % 10}"
                ax.scatter(xs, ys, s=18, marker="x", color=color, label=f"{r.regime}: raw estimate")
                ax.scatter(r.a * xs + r.b / div, ys, s=18, facecolors="none", edgecolors=color,
                           label=f"{r.regime}: calibrated")
            lim = max(ax.get_xlim()[1], ax.get_ylim()[1])
            ax.plot([0, lim], [0, lim], "k--", lw=0.8, label="measured = predicted")
            ax.set(title=t.replace("_", " "), xlabel=f"predicted ({unit})", ylabel=f"measured ({unit})")
            ax.legend(fontsize=6, loc="upper left")
            ax.grid(alpha=0.3)
        name = str(mine[0].device_name).replace("$", r"\$")  # no mathtext from a results line
        fig.suptitle(f"{name}: measured memory vs the components estimate, before and after calibration")
        fig.tight_layout()
        path = fig_dir / f"calibration-{slugify(slug)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out


# ---------------------------------------------------------------- using a table


@dataclass
class Calibration:
    """A fitted table read back from <slug>.csv: (regime, target) -> row."""

    path: Path
    device_slug: str
    device_name: str
    estimator: str
    rows: dict[tuple[str, str], dict]

    def regimes(self) -> list[str]:
        return sorted({r for r, _ in self.rows})

    def n_runs(self, regime_label: str) -> int:
        return max((int(row["n_runs"]) for (r, _), row in self.rows.items() if r == regime_label), default=0)

    def apply(self, estimate, regime_label: str) -> dict:
        """Calibrated components and totals for an `Estimate` (components dict, total). `total` is the most
        complete calibrated peak (nvml_peak, else peak_reserved, else peak_allocated); `n_runs` and
        `table` say what it rests on. Without rows for the regime: `calibrated` False, raw figures."""
        if getattr(estimate, "estimator", self.estimator) != self.estimator:
            raise ValueError(f"table {self.path} calibrates estimator {self.estimator!r}, "
                             f"not {estimate.estimator!r}")
        raw_total = int(estimate.total)
        result: dict[str, Any] = {"table": str(self.path), "device_slug": self.device_slug,
                                  "regime": regime_label, "n_runs": self.n_runs(regime_label),
                                  "raw_total": raw_total}
        if not result["n_runs"]:
            result.update(calibrated=False, components=dict(estimate.components), total=raw_total,
                          total_target=None, totals={}, uncalibrated_components=sorted(estimate.components),
                          note=f"no rows for regime {regime_label!r} in {self.path} (has: "
                               f"{', '.join(self.regimes()) or 'none'}); uncalibrated")
            return result

        def cal(target: str, x: float) -> int:
            row = self.rows[(regime_label, target)]
            return max(0, round(float(row["a"]) * x + float(row["b"] or 0)))

        comps, raw_only = {}, []
        for k, v in estimate.components.items():
            if (regime_label, k) in self.rows:
                comps[k] = cal(k, v)
            else:
                comps[k] = int(v)
                raw_only.append(k)
        totals = {t: cal(t, raw_total) for t in TOTALS if (regime_label, t) in self.rows}
        target = next((t for t in reversed(TOTALS) if t in totals), None)
        result.update(calibrated=True, components=comps, totals=totals, total_target=target,
                      total=totals[target] if target else raw_total, uncalibrated_components=raw_only,
                      note=f"calibrated by {self.path} ({result['n_runs']} {regime_label} runs on "
                           f"{self.device_name})")
        return result


NUMERIC_FIELDS = ("a", "b")  # the fitted line: what `apply` computes with, so each must be a finite number
INT_FIELDS = ("n_runs",)


def load_calibration(path: str | Path) -> Calibration:
    """Read a <slug>.csv written by `calibrate` (a .md path is read from its sibling .csv). A table that is not
    one (missing, not UTF-8, missing columns, no rows, a fitted a/b that is not a finite number, n_runs not an
    integer) is a ValueError (FileNotFoundError where it does not exist) whose one-line message names the file,
    the row and the column: `estimate` and `fit` print it as the --calibration error (checked_calibration)."""
    path = Path(path)
    if path.suffix == ".md":
        path = path.with_suffix(".csv")
    if not path.is_file():
        raise FileNotFoundError(f"calibration table {str(path)!r} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a calibration table (not UTF-8 text: byte at offset {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"{path} cannot be read ({exc.strerror})") from None
    import io

    try:
        data = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise ValueError(f"{path} is not a calibration table (CSV: {exc})") from None
    missing = set(CSV_FIELDS) - set(data[0] if data else CSV_FIELDS)
    if not data or missing:
        gone = sorted(missing)
        what = "no rows" if not data else (f"missing {len(gone)} of its {len(CSV_FIELDS)} columns: "
                                           f"{', '.join(gone[:4])}{', ...' if len(gone) > 4 else ''}")
        raise ValueError(f"{path} is not a calibration table ({what}; write one with `calibrate`)")
    for i, row in enumerate(data, start=2):  # line 1 is the header
        for col in NUMERIC_FIELDS + INT_FIELDS:
            raw = row.get(col)
            try:
                value = float(raw or ("0" if col == "b" else "nan"))  # an empty b is 0 (fit a only)
            except ValueError:
                value = math.nan
            ok = math.isfinite(value) and (col not in INT_FIELDS or (value == int(value) and value >= 0))
            if not ok:
                raise ValueError(f"{path} line {i}: {col} = {str(raw)[:40]!r}; allowed: "
                                 f"{'a whole number >= 0' if col in INT_FIELDS else 'a finite number'}")
    return Calibration(path, data[0]["device_slug"], data[0]["device_name"], data[0]["estimator"],
                       {(r["regime"], r["target"]): r for r in data})


def checked_calibration(path: str | Path, what: str = "--calibration") -> Calibration:
    """load_calibration for a table the user named: any problem is a ConfigError (exit 2) naming `what`. The
    commands (estimate, fit) call this before any work, so a bad table is one line, never a traceback."""
    from profiler.config import ConfigError

    try:
        return load_calibration(path)
    except FileNotFoundError:
        raise ConfigError(f"{what}: table {str(path)!r} does not exist") from None
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def default_calibration_path(gpu_slug: str) -> Path | None:
    """results/calibration/<gpu-slug>.csv where it exists, else None (the estimate is uncalibrated)."""
    path = CALIBRATION_DIR / f"{slugify(gpu_slug)}.csv"
    return path if path.is_file() else None
