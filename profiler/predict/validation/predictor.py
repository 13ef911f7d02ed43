"""The predictor a validation row needs, run once: simulate where it can run the config, components where not.

`simulate`: profiler.simulate.backend.simulate, primed, through profiler.predict.fit.Predictor (which also
handles the 8-bit optimizers). `components`: profiler.formulas where simulate refuses the config (DeepSpeed ZeRO,
CPU offload). Figures are per rank (rank 0 of symmetric ranks). The prediction cache keeps an entry while every
profiler module loaded when it was made is unchanged (profiler.predict.validation.run.loaded_modules).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from profiler.config import RunConfig


@dataclass
class Prediction:
    """One config's prediction (bytes per rank)."""

    predictor: str  # simulate | components
    allocated: int
    reserved: int | None = None  # the predictor's own reserved figure, where it has one
    nvml: int | None = None
    note: str = ""
    seconds: float = 0.0  # wall time of the prediction when it was made
    cpu_seconds: float = 0.0  # this process's CPU time (user + sys, all threads) over the same span
    cached: bool = False


def predictor_for(cfg: RunConfig) -> str:
    """simulate unless it refuses the config (ZeRO and CPU offload: simulate.backend.simulate says why)."""
    pc = cfg.parallel
    if pc.strategy.startswith("zero") or pc.offload.params or pc.offload.optimizer:
        return "components"
    return "simulate"


def _field(rec: dict, name: str) -> int | None:
    """A field of a simulate record, at its top level or under `peaks` (where the allocator replay puts it)."""
    v = rec.get(name, (rec.get("peaks") or {}).get(name))
    return int(v) if isinstance(v, int | float) else None


def predict(cfg: RunConfig) -> Prediction:
    """One config's prediction with the predictor it needs; SimulationFailed where simulate cannot trace it."""
    t0, c0 = time.perf_counter(), time.process_time()
    kind = predictor_for(cfg)
    if kind == "components":
        from profiler.formulas import estimate

        est = estimate("components", cfg)
        return Prediction("components", est.total - est.get("overhead"), note="per rank, overhead removed",
                          seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
    from profiler.predict.fit import Predictor, modelled_allowance

    pred = Predictor(modelled_allowance(), 0)
    peak = pred.peak(cfg)  # 8-bit optimizers run bitsandbytes' own step on fake tensors
    rec = pred.records[cfg.config_hash()]
    reserved, nvml = _field(rec, "predicted_reserved_bytes"), _field(rec, "predicted_nvml_bytes")
    note = f"attention {rec.get('attention_kernel') or '?'}"
    return Prediction("simulate", peak, reserved, nvml, note, time.perf_counter() - t0, time.process_time() - c0)
