"""One category vocabulary shared by measurements (probes) and predictions (formulas).

Keeping a single enum lets calibration fit a factor per category without string drift
(as PyTorch's mem_tracker does with `_MemRefType`).
"""

from __future__ import annotations

from enum import Enum


class Category(str, Enum):
    """Where a live byte belongs. The first five are seen by the tensor tracker; the last two
    exist only on CUDA (caching-allocator slack and memory outside PyTorch's allocator)."""

    WEIGHTS = "weights"
    GRADIENTS = "gradients"
    OPTIMIZER = "optimizer"
    ACTIVATIONS = "activations"
    TEMPORARIES = "temporaries"
    ALLOCATOR = "allocator"
    CONTEXT = "context"


TRACKED = (
    Category.WEIGHTS,
    Category.GRADIENTS,
    Category.OPTIMIZER,
    Category.ACTIVATIONS,
    Category.TEMPORARIES,
)

GiB = 2**30
GB = 10**9


def fmt_gib(n_bytes: int | float | None) -> str:
    """Bytes as GiB (2^30) for display only; bytes stay integers everywhere else."""
    if n_bytes is None:
        return "-"
    return f"{n_bytes / GiB:.2f} GiB"
