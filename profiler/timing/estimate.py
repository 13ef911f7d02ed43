"""How long and what it costs: a step's counted work -> step time, tokens/s, MFU, hours, GPU-hours and cost.

All of it is an estimate: simulate's FLOPs and bytes per phase (profiler.timing.flops) through the roofline time
model (profiler.timing.model) at the efficiencies fitted on published throughputs; the error band is the fit's
leave-one-out error on those rows (profiler/data/timing_efficiency.csv).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from profiler.config import ConfigError, RunConfig
from profiler.timing.model import Efficiency, StepTime, fitted_efficiency, step_time
from profiler.timing.specs import spec_for

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_count(text: str, field: str) -> int:
    """'2e9', '500M', '1.5B', '2T', '10_000' -> a positive int; ConfigError naming the field otherwise."""
    m = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([kmbgt]?)\s*", str(text).lower())
    if not m:
        raise ConfigError(f"{field}: {text!r} is not a count; allowed: a positive number like 2e9, 500M, 1.5B, 2T")
    value = float(m.group(1).replace("_", "")) * _SUFFIX[m.group(2)]
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"{field}: {text!r} must be at least 1")
    return int(value)


@dataclass
class TrainingTime:
    """Step time and, for a token budget, hours, GPU-hours and cost (all estimated)."""

    step: StepTime
    tokens: int | None
    steps: int | None
    hours: float | None
    gpu_hours: float | None
    price_per_gpu_hour: float | None
    cost: float | None
    model: str
    band: str

    def to_dict(self) -> dict:
        return {"step": self.step.to_dict(), "tokens": self.tokens, "steps": self.steps, "hours": self.hours,
                "gpu_hours": self.gpu_hours, "price_per_gpu_hour": self.price_per_gpu_hour, "cost": self.cost,
                "model": self.model, "error_band": self.band}


def band_text(eff: Efficiency) -> str:
    if eff.loo_median_pct is None:
        return "no cross-validated error (efficiencies not fitted)"
    return (f"±{eff.loo_median_pct:.0f} % (median leave-one-out error of tokens/s on {eff.n_rows} published rows; "
            f"90th percentile {eff.loo_p90_pct:.0f} %)")


def time_to_train(work: dict, cfg: RunConfig, gpu: str, tokens: int | None = None, price: float | None = None,
                  eff: Efficiency | None = None) -> TrainingTime:
    """The estimate for cfg on `gpu` (a preset with a datasheet row) from the counted work of its step."""
    eff = eff or fitted_efficiency()
    st = step_time(work, cfg, spec_for(gpu), eff)
    steps = hours = gpu_hours = cost = None
    if tokens is not None:
        steps = math.ceil(tokens / st.tokens_per_step)
        hours = steps * st.step_s / 3600
        gpu_hours = hours * st.world_size
        cost = gpu_hours * price if price is not None else None
    model = (f"estimated: simulate's FLOPs/bytes per phase -> roofline time model (profiler/timing/model.py) on "
             f"{gpu}'s datasheet ({st.dtype} peak {st.peak_flops / 1e12:.0f} TFLOPS), efficiencies matmul "
             f"{eff.matmul_for(spec_for(gpu).memory):.2f} / memory {eff.memory:.2f} / link {eff.link:.2f} "
             f"{eff.source}")
    return TrainingTime(st, tokens, steps, hours, gpu_hours, price, cost, model, band_text(eff))
