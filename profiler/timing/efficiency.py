"""Fits the time model's efficiencies on published throughput rows, with a leave-one-out error.

Fractions of the datasheet peaks: e_matmul (tensor-core FLOP/s reached by matmuls and attention; optionally one
per memory type, HBM datacenter vs GDDR workstation/consumer GPUs, `tiered`), e_memory (memory bandwidth reached by
memory-bound ops), e_link (link bandwidth reached by collectives). Fitted by grid search minimising the sum of
squared log errors of tokens/s per GPU over the rows marked `fit` (validation/throughput.yaml); ties go to the
larger e_link (a parameter no communication-bound row constrains stays at the datasheet). The leave-one-out error
refits without each row and predicts it: the error band `fit` prints. Written to profiler/data/timing_efficiency.csv
(parameters) and timing_fit_rows.csv (the rows, their counted work, the fitted and the leave-one-out predictions).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from profiler.timing.model import EFFICIENCY_CSV, Efficiency

GRID_MATMUL = [round(0.10 + 0.02 * i, 2) for i in range(46)]  # 0.10 .. 1.00
GRID_MEMORY = [round(0.10 + 0.05 * i, 2) for i in range(19)]  # 0.10 .. 1.00
GRID_LINK = [round(1.00 - 0.05 * i, 2) for i in range(19)]  # 1.00 .. 0.10 (ties keep the larger)
ROWS_CSV = EFFICIENCY_CSV.parent / "timing_fit_rows.csv"



@dataclass(frozen=True)
class FitRow:
    """One published row reduced to what the fit needs: its phases as seconds at 100 % of each peak
    (profiler.timing.model.unit_seconds), tokens per GPU per step, and the published tokens/s per GPU."""

    id: str
    phases: tuple[dict[str, float], ...]
    tokens_per_gpu: float
    measured: float
    memory: str = "hbm"  # the GPU's memory type: which matmul efficiency applies in a tiered fit

    def predict(self, e_mm, e_mem, e_link, e_mm_gddr=None):
        """tokens/s per GPU at these efficiencies (floats or numpy arrays of grid points)."""
        if self.memory == "gddr" and e_mm_gddr is not None:
            e_mm = e_mm_gddr
        step = 0.0
        for u in self.phases:
            compute = (np.maximum(u["mm_f"] / e_mm, u["mm_b"] / e_mem)
                       + np.maximum(u["att_f"] / e_mm, u["att_b"] / e_mem) + u["other"] / e_mem)
            step = step + np.maximum(compute, u["comm"] / e_link)
        return self.tokens_per_gpu / step


def _grid(tiered: bool):
    if tiered:
        link, mm, gd, mem = np.meshgrid(GRID_LINK, GRID_MATMUL, GRID_MATMUL, GRID_MEMORY, indexing="ij")
        return mm.ravel(), mem.ravel(), link.ravel(), gd.ravel()
    link, mm, mem = np.meshgrid(GRID_LINK, GRID_MATMUL, GRID_MEMORY, indexing="ij")
    return mm.ravel(), mem.ravel(), link.ravel(), None


def can_tier(rows: Sequence[FitRow]) -> bool:
    """A matmul efficiency per memory type only where each type has at least 2 rows (never one row's constant)."""
    return min(sum(r.memory == m for r in rows) for m in ("hbm", "gddr")) >= 2


def fit(rows: Sequence[FitRow], tiered: bool = False) -> Efficiency:
    """The grid point with the least squared log error of tokens/s per GPU over `rows` (at least 2); among equal
    losses the first in grid order, i.e. the largest e_link. `tiered`: the matmul efficiency of GDDR
    (workstation / consumer) GPUs is fitted apart from the HBM (datacenter) one, where `can_tier(rows)`."""
    if len(rows) < 2:
        raise ValueError("fitting the efficiencies needs at least 2 rows")
    tiered = tiered and can_tier(rows)
    mm, mem, link, gd = _grid(tiered)
    loss = sum(np.log(r.predict(mm, mem, link, gd) / r.measured) ** 2 for r in rows)
    k = int(np.argmin(loss))
    return Efficiency(float(mm[k]), float(mem[k]), float(link[k]), matmul_gddr=float(gd[k]) if tiered else None)


def predict(row: FitRow, eff: Efficiency) -> float:
    return float(row.predict(eff.matmul, eff.memory, eff.link, eff.matmul_gddr))


def leave_one_out(rows: Sequence[FitRow], tiered: bool = False) -> list[float]:
    """For each row: its tokens/s per GPU predicted by the efficiencies fitted on the other rows."""
    return [predict(r, fit([x for j, x in enumerate(rows) if j != i], tiered)) for i, r in enumerate(rows)]


def abs_pct(pred: float, meas: float) -> float:
    return abs(pred - meas) / meas * 100


def write(eff: Efficiency, rows: Sequence[FitRow], fitted: list[float], loo: list[float],
          extra: list[dict], other_model: tuple[str, float] | None = None) -> tuple[float, float]:
    """Write the parameters and the rows they came from; returns (LOO median, LOO p90) absolute % error."""
    ids, measured = [r.id for r in rows], [r.measured for r in rows]
    errs = sorted(abs_pct(p, m) for p, m in zip(loo, measured, strict=True))
    med = statistics.median(errs)
    p90 = errs[min(len(errs) - 1, math.ceil(0.9 * len(errs)) - 1)]
    fit_errs = [abs_pct(p, m) for p, m in zip(fitted, measured, strict=True)]
    with EFFICIENCY_CSV.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["parameter", "value", "meaning"])
        tiered = eff.matmul_gddr is not None
        w.writerow(["e_matmul", eff.matmul, "fraction of the datasheet dense tensor-core FLOP/s reached by matmuls "
                    "and attention" + (" on HBM (datacenter) GPUs" if tiered else "")])
        w.writerow(["e_matmul_gddr", eff.matmul_gddr if tiered else "", "the same on GDDR (workstation / consumer) "
                    "GPUs, fitted apart" if tiered else "not fitted apart: e_matmul applies to every GPU"])
        w.writerow(["e_memory", eff.memory, "fraction of the datasheet HBM bandwidth reached by memory-bound ops"])
        w.writerow(["e_link", eff.link, "fraction of one direction of the datasheet link bandwidth reached by "
                    "ring collectives"])
        w.writerow(["n_rows", len(rows), "rows fitted on (timing_fit_rows.csv; from validation/throughput.yaml)"])
        w.writerow(["fit_median_abs_pct", round(statistics.median(fit_errs), 2),
                    "median absolute error of tokens/s per GPU, fitted on every row (in-sample)"])
        w.writerow(["loo_median_abs_pct", round(med, 2),
                    "median absolute error of tokens/s per GPU, each row predicted by a fit without it"])
        w.writerow(["loo_p90_abs_pct", round(p90, 2), "90th percentile of the same"])
        if other_model is not None:
            w.writerow([f"loo_median_abs_pct_{other_model[0]}", round(other_model[1], 2),
                        f"the same for the {other_model[0]} model (not chosen: its leave-one-out error is larger)"])
    with ROWS_CSV.open("w", newline="") as f:
        keys = list(extra[0]) if extra else []
        w = csv.writer(f)
        w.writerow(["id", "measured_tokens_per_s_per_gpu", "fitted_prediction", "loo_prediction", "loo_error_pct",
                    *keys])
        for i, m, p, q, e in zip(ids, measured, fitted, loo, extra, strict=True):
            w.writerow([i, round(m, 1), round(p, 1), round(q, 1), round((q - m) / m * 100, 1),
                        *(e[k] for k in keys)])
    return med, p90
