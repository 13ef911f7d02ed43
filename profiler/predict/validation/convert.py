"""Units and metrics: a published figure in bytes, and a prediction (allocated bytes) in the figure's metric.

allocated: the predicted peak allocated bytes as they are. reserved: the record's `predicted_reserved_bytes`
where the predictor gives one, else the allowance `fit` states for the allocator (profiler.predict.fit.
modelled_allowance: allocator reserve as a share of the allocated peak). nvidia-smi: the record's
`predicted_nvml_bytes` where given, else reserved + the same allowance's CUDA context. not-stated: compared
with the reserved prediction (the tables say so).
"""

from __future__ import annotations

from dataclasses import dataclass

from profiler.predict.fit import modelled_allowance
from profiler.predict.validation.rows import UNIT_BYTES

COMPARED_AS = {"allocated": "allocated", "reserved": "reserved", "nvidia-smi": "nvidia-smi",
               "not-stated": "reserved"}
REPLAY_METRICS = ("reserved", "nvidia-smi")  # #22: the rows measured so, replay vs the allowance


def to_bytes(value: float, unit: str) -> int:
    """A published figure in bytes: GiB = 2^30, GB = 10^9 (and MiB, MB)."""
    if unit not in UNIT_BYTES:
        raise ValueError(f"unit {unit!r} is not allowed; allowed: {', '.join(UNIT_BYTES)}")
    return int(round(value * UNIT_BYTES[unit]))


def from_bytes(n: float, unit: str) -> float:
    return n / UNIT_BYTES[unit]


@dataclass(frozen=True)
class Converted:
    """A prediction in the row's metric and how it got there."""

    bytes: int
    how: str  # "allocated", "reserved (allocator replay)", "reserved (+3 % allowance)", ...


def predicted_in_metric(metric: str, allocated: int, reserved: int | None = None,
                        nvml: int | None = None) -> Converted:
    """`allocated` (peak allocated bytes per rank) in `metric`; `reserved` / `nvml` are the predictor's own
    figures where it gives them (module docstring)."""
    if metric not in COMPARED_AS:
        raise ValueError(f"metric {metric!r} is not a memory metric; allowed: {', '.join(COMPARED_AS)}")
    target = COMPARED_AS[metric]
    if target == "allocated":
        return Converted(allocated, "allocated")
    allowance = modelled_allowance()
    if reserved is not None:
        res, res_how = reserved, "reserved (predicted)"
    else:
        res, res_how = allocated + allowance.allocator_bytes(allocated), \
            f"reserved (allocated + {allowance.slack:.0%} allowance)"
    if target == "reserved":
        return Converted(res, res_how)
    if nvml is not None:
        return Converted(nvml, "nvidia-smi (predicted)")
    return Converted(res + allowance.context_bytes,
                     f"nvidia-smi ({res_how} + {allowance.context_bytes / 2**20:.0f} MiB CUDA context)")


def allowance_in_metric(metric: str, allocated: int) -> Converted:
    """The rule before the allocator replay (#22): allocated + the allowance's 3 % (+ its CUDA context for
    nvidia-smi), whatever the predictor's own reserved figure; `validate` sets it beside the replay."""
    return predicted_in_metric(metric, allocated)
