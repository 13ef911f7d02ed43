"""Named analytic estimators: RunConfig -> bytes per component, each citing its source.

    from profiler.formulas import estimate, estimate_all, ESTIMATORS
    est = estimate("components", cfg)       # one estimator
    for est in estimate_all(cfg): ...       # every registered estimator, in registration order

An estimator never reads measured data (calibration is the only place measurements flow back).
A formula that only gives a total puts it in the components it implies (rule_1p2x: weights = P x Q/8,
overhead = 0.2 x that). Bytes are ints; missing components are 0.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from profiler.config import RunConfig

GB_DECIMAL = 10**9
COMPONENTS = ("weights", "gradients", "optimizer", "activations", "temporaries", "overhead", "comm_buffers")
# comm_buffers: what data parallelism adds per rank (profiler.formulas.sharding); 0 in one process


@dataclass(frozen=True)
class Estimate:
    """One estimator's prediction for one config."""

    estimator: str
    components: dict[str, int]  # keys from COMPONENTS (bytes, ints; missing = 0)
    total: int  # bytes; == sum(components.values())
    source: str  # citation (URL / paper)
    notes: str = ""
    details: dict[str, int] = field(default_factory=dict, compare=False)  # finer named terms (bytes)

    def get(self, component: str) -> int:
        return self.components.get(component, 0)


def make_estimate(
    estimator: str,
    parts: dict[str, int | float],
    source: str,
    notes: str = "",
    details: dict[str, int | float] | None = None,
) -> Estimate:
    """Round every component to int bytes, reject unknown keys, and set total = sum."""
    unknown = set(parts) - set(COMPONENTS)
    if unknown:
        raise ValueError(
            f"{estimator}: unknown components {sorted(unknown)}; allowed: {', '.join(COMPONENTS)}"
        )
    comps = {k: int(round(parts.get(k, 0))) for k in COMPONENTS
             if k != "comm_buffers" or parts.get(k)}  # only sharded estimates have comm buffers
    det = {k: int(round(v)) for k, v in (details or {}).items()}
    return Estimate(estimator, comps, sum(comps.values()), source, notes, det)


class NotApplicable(ValueError):
    """The estimator has no figure for this config (e.g. the LLaMA-Factory table for inference)."""


ESTIMATORS: dict[str, Callable[[RunConfig], Estimate]] = {}


def register(name: str) -> Callable[[Callable[[RunConfig], Estimate]], Callable[[RunConfig], Estimate]]:
    def deco(fn: Callable[[RunConfig], Estimate]) -> Callable[[RunConfig], Estimate]:
        ESTIMATORS[name] = fn
        return fn

    return deco


def estimate(name: str, cfg: RunConfig) -> Estimate:
    """Run the estimator `name` on cfg; KeyError names the allowed estimators; NotApplicable where the
    source has no figure for this regime."""
    if name not in ESTIMATORS:
        raise KeyError(f"unknown estimator {name!r}; allowed: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name](cfg)


def estimate_all(cfg: RunConfig) -> list[Estimate]:
    """Every registered estimator that applies to cfg, in registration order (NotApplicable ones skipped)."""
    out = []
    for fn in ESTIMATORS.values():
        try:
            out.append(fn(cfg))
        except NotApplicable:
            continue
    return out


# Registration order is display order: the folk rules first, our component model last.
for _module in ("rules", "accelerate_estimate", "llamafactory", "components", "deepspeed_zero"):
    importlib.import_module(f"profiler.formulas.{_module}")
