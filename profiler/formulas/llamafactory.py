"""The LLaMA-Factory hardware-requirements table, interpolated by parameter count.

The table (llamafactory_table.csv, next to this file, with its source) gives one total per model size and
method. Dense models interpolate linearly in P between the LLaMA columns (7B..65B) and scale
proportionally (through the origin) below 7B and above 65B; mixture-of-experts configs scale the 8x7B
column by P / P(8x7B). The table has no batch, sequence or optimizer dimension and no inference row.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

from profiler.config import RunConfig
from profiler.formulas import GB_DECIMAL, Estimate, NotApplicable, make_estimate, register
from profiler.formulas.arch import arch_of
from profiler.formulas.params import param_plan

TABLE = Path(__file__).with_name("llamafactory_table.csv")
SOURCE = "https://github.com/hiyouga/LLaMA-Factory#hardware-requirement"
DENSE = ("7B", "13B", "30B", "65B")


@lru_cache(maxsize=1)
def load_table() -> dict[str, dict[str, float]]:
    """row name -> {column -> value}; GB rows as published, plus the `params` row."""
    with TABLE.open() as f:
        rows = list(csv.reader(line for line in f if not line.startswith("#")))
    header = rows[0][1:]
    return {r[0]: dict(zip(header, map(float, r[1:]))) for r in rows[1:]}


def method_of(cfg: RunConfig) -> str:
    rg = cfg.regime
    if rg.kind == "inference":
        raise NotApplicable("llamafactory_table: the table has no inference row")
    return {"full": "full_16bit", "freeze": "freeze", "lora": "lora"}.get(rg.kind, f"qlora_{rg.bits}bit")


def table_gb(method: str, params: int, moe: bool = False) -> float:
    """Interpolated GB for `method` at `params` parameters."""
    t = load_table()
    row, sizes = t[method], t["params"]
    if moe:
        return row["8x7B"] * params / sizes["8x7B"]
    pts = [(sizes[c], row[c]) for c in DENSE]
    if params <= pts[0][0]:
        return pts[0][1] * params / pts[0][0]
    if params >= pts[-1][0]:
        return pts[-1][1] * params / pts[-1][0]
    for (p0, v0), (p1, v1) in zip(pts, pts[1:]):
        if p0 <= params <= p1:
            return v0 + (v1 - v0) * (params - p0) / (p1 - p0)
    raise AssertionError("unreachable")


@register("llamafactory_table")
def llamafactory_table(cfg: RunConfig) -> Estimate:
    """LLaMA-Factory's published requirements table (Full 16-bit, Freeze, LoRA, QLoRA 8/4-bit x
    7B/13B/30B/65B/8x7B), interpolated by parameter count. The total is split as it implies: the weights at
    the method's precision, the rest unattributed (overhead).

    Source: hiyouga/LLaMA-Factory README, "Hardware Requirement", https://github.com/hiyouga/LLaMA-Factory
    """
    method = method_of(cfg)
    arch = arch_of(cfg)
    P = arch.total_params
    moe = any(k in arch.model_type for k in ("mixtral", "moe"))
    total = round(table_gb(method, P, moe) * GB_DECIMAL)
    weights = min(total, param_plan(cfg).weight_bytes)
    return make_estimate(
        "llamafactory_table",
        {"weights": weights, "overhead": total - weights},
        SOURCE,
        f"row {method}, {'8x7B (MoE) column scaled by P' if moe else 'dense columns interpolated'}, P = {P:,}; "
        "weights at the regime's storage, rest unattributed",
    )
