"""The fewest GPUs whose per-rank estimate fits, per data-parallel strategy (`estimate --min-gpus`).

Per-rank memory never grows with the world size under these strategies, so the answer is found by
doubling, then bisection, up to MAX_GPUS. Each estimator that models sharding answers separately:
`components` (every strategy) and `deepspeed_zero` (ZeRO-2/3, model states only).
"""

from __future__ import annotations

from profiler.config import RunConfig
from profiler.formulas import Estimate, estimate

STRATEGIES = ("ddp", "fsdp2", "zero1", "zero2", "zero3")
SHARDING_ESTIMATORS = ("components", "deepspeed_zero")
MAX_GPUS = 4096


def with_parallel(cfg: RunConfig, **parallel) -> RunConfig:
    """cfg with parallel fields replaced, validated (ConfigError for a combination no engine runs); the settings
    of another strategy (offload, FSDP2's resharding, dtypes and meta init) are dropped where they do not apply."""
    from profiler.config import load_config

    data = cfg.model_dump()
    data["parallel"].update(parallel)
    s = data["parallel"]["strategy"]
    if s == "ddp":
        data["parallel"]["offload"] = {"params": False, "optimizer": False}
    elif s in ("zero1", "zero2"):
        data["parallel"]["offload"]["params"] = False
    rg = data["regime"]
    if s in ("fsdp2", "zero3") and rg["kind"] == "qlora" and rg.get("quant_storage") == "uint8":
        del rg["quant_storage"]  # FSDP-QLoRA / ZeRO-3 + QLoRA store the packed weights as floats
        # (config._fsdp_qlora_defaults: the model's dtype)
    if s != "fsdp2":
        data["parallel"].update(reshard_after_forward=True, param_dtype=None, reduce_dtype=None)
        if data["parallel"].get("init") == "meta":  # fsdp2's meta-device init: the others build the whole model
            data["parallel"]["init"] = "auto"
    return load_config(None, base=data)


def min_gpus(cfg: RunConfig, name: str, strategy: str, budget: int) -> tuple[int, Estimate] | None:
    """(fewest GPUs that fit, the estimate there), or None when no world size fits (per-rank memory stops
    falling above the budget, or MAX_GPUS do not fit); NotApplicable and ConfigError propagate."""

    def at(n: int) -> Estimate:
        return estimate(name, with_parallel(cfg, strategy=strategy, world_size=n))

    first = at(1)
    if first.total <= budget:
        return 1, first
    lo, hi, last = 1, 2, first.total
    while (now := at(hi).total) > budget:
        if now >= last or hi * 2 > MAX_GPUS:  # per-rank memory no longer falls (DDP: never does)
            return None
        lo, hi, last = hi, hi * 2, now
    while hi - lo > 1:  # invariant: lo does not fit, hi fits
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if at(mid).total <= budget else (mid, hi)
    return hi, at(hi)
