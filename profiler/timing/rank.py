"""Time to train for each data-parallel option of `estimate --min-gpus` (strategy x GPU count), to rank them.

One simulation of the config on one GPU (its per-rank batch) gives the compute work of a rank, which the
strategies share; each option then adds its own per-step collectives, from the model's bytes, and shards the
optimizer step's traffic where the strategy shards the optimizer state:
- ddp: all-reduce of the gradients (trainable parameters, in their dtype);
- zero1 / zero2: reduce-scatter of the gradients + all-gather of the updated trainable parameters (DeepSpeed
  stage 1/2 partition the optimizer state and all-gather the updated fp16/bf16 parameters after the step);
- fsdp2 / zero3: all-gather of the weights in forward and again in backward (reshard after forward) +
  reduce-scatter of the gradients.
Communication overlaps compute as in profiler.timing.model. An estimate, like every figure of the timing room.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from profiler.config import RunConfig
from profiler.timing.flops import WorkRecorder, step_work
from profiler.timing.model import Efficiency, fitted_efficiency, step_time
from profiler.timing.specs import spec_for

SHARDED_OPTIMIZER = ("zero1", "zero2", "zero3", "fsdp2")


@dataclass
class OptionTime:
    strategy: str
    gpus: int
    step_s: float
    tokens_per_s: float
    hours: float
    gpu_hours: float
    bound: str


def single_rank_work(cfg: RunConfig) -> tuple[dict, dict]:
    """(the step's work, the model stats) of cfg on one GPU, from one counted simulation."""
    from profiler.formulas.min_gpus import with_parallel
    from profiler.simulate.backend import simulate

    one = with_parallel(cfg, strategy="none", world_size=1)
    rec = simulate(one, primed=True, recorder=WorkRecorder())
    if rec["status"] != "ok":
        raise RuntimeError(f"simulate: {rec['status']}: {rec.get('error')}")
    return step_work(rec), rec["model"]


def option_work(work: dict, model: dict, strategy: str, n: int, grad_bytes_per_param: int) -> dict:
    """The single-GPU work with the option's collectives added and its optimizer traffic sharded."""
    phases = {k: {**v, "collectives": {}} for k, v in work["phases"].items()}
    weights = model["weight_bytes"]
    grads = model["trainable_params"] * grad_bytes_per_param
    if strategy in SHARDED_OPTIMIZER and "optimizer_step" in phases:
        phases["optimizer_step"]["other_bytes"] //= n

    def add(phase: str, kind: str, payload: int) -> None:
        if phase in phases:
            c = phases[phase]["collectives"].setdefault(kind, {"count": 0, "bytes": 0})
            c["count"] += 1
            c["bytes"] += payload

    if strategy == "ddp":
        add("backward", "all_reduce", grads)
    elif strategy in ("zero1", "zero2"):
        add("backward", "reduce_scatter", grads)
        add("optimizer_step", "all_gather", grads)
    elif strategy in ("fsdp2", "zero3"):
        add("forward", "all_gather", weights)
        add("backward", "all_gather", weights)
        add("backward", "reduce_scatter", grads)
    return {**work, "phases": phases}


def rank_options(cfg: RunConfig, options: list[tuple[str, int]], gpu: str, tokens: int,
                 eff: Efficiency | None = None) -> list[OptionTime]:
    """Each (strategy, GPUs) option's time to train `tokens` on `gpu`, fastest first."""
    from profiler.formulas.min_gpus import with_parallel
    from profiler.measure.loading import DTYPES

    eff = eff or fitted_efficiency()
    spec = spec_for(gpu)
    work, model = single_rank_work(cfg)
    grad_size = DTYPES[cfg.model.dtype].itemsize
    out = []
    for strategy, n in options:
        c = with_parallel(cfg, strategy=strategy, world_size=n)
        st = step_time(option_work(work, model, strategy, n, grad_size), c, spec, eff)
        steps = math.ceil(tokens / st.tokens_per_step)
        hours = steps * st.step_s / 3600
        out.append(OptionTime(strategy, n, st.step_s, st.tokens_per_s, hours, hours * n,
                              "/".join(sorted(set(st.bound.values())))))
    return sorted(out, key=lambda o: o.hours)
