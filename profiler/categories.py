"""One category vocabulary shared by measurements (probes) and predictions (formulas).

Keeping a single enum lets calibration fit a factor per category without string drift
(as PyTorch's mem_tracker does with `_MemRefType`).
"""

from __future__ import annotations

from enum import StrEnum


class Category(StrEnum):
    """Where a live byte belongs. The first five and comm_buffers are seen by the tensor tracker; the
    last three exist only on CUDA: allocated bytes the tracker missed (cuBLAS workspaces, rounding),
    caching-allocator slack (reserved - allocated) and memory outside PyTorch's allocator (context, paged
    state). comm_buffers is what data parallelism adds beyond the local shards: FSDP2's unsharded
    parameters (all-gather outputs, prefetch), unsharded gradients and reduce-scatter buffers, DDP's
    gradient buckets; it is zero in a one-process run."""

    WEIGHTS = "weights"
    GRADIENTS = "gradients"
    OPTIMIZER = "optimizer"
    ACTIVATIONS = "activations"
    TEMPORARIES = "temporaries"
    COMM_BUFFERS = "comm_buffers"
    UNTRACKED = "untracked"
    ALLOCATOR = "allocator"
    CONTEXT = "context"


TRACKED = (
    Category.WEIGHTS,
    Category.GRADIENTS,
    Category.OPTIMIZER,
    Category.ACTIVATIONS,
    Category.TEMPORARIES,
)
# What the tracker counts: TRACKED plus comm_buffers, which a breakdown lists only where it is non-zero
# (data-parallel runs), so one-process lines keep the five keys they always had.
TRACKER_CATEGORIES = (*TRACKED, Category.COMM_BUFFERS)

GiB = 2**30
GB = 10**9


def fmt_gib(n_bytes: int | float | None) -> str:
    """Bytes as GiB (2^30) for display only; bytes stay integers everywhere else."""
    if n_bytes is None:
        return "-"
    return f"{n_bytes / GiB:.2f} GiB"


_BINARY = (("B", 1), ("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30), ("TiB", 2**40))


def pick_unit(max_bytes: int | float) -> tuple[str, int]:
    """One binary unit for a whole table, so its columns compare at a glance."""
    name, div = _BINARY[0]
    for name_, div_ in _BINARY:
        if max_bytes >= div_:
            name, div = name_, div_
    return name, div


def fmt_in(n_bytes: int | float | None, div: int) -> str:
    return "-" if n_bytes is None else f"{n_bytes / div:,.2f}"


def fmt_auto(n_bytes: int | float | None) -> str:
    """Bytes with the largest binary unit that keeps the number >= 1 (display only)."""
    if n_bytes is None:
        return "-"
    name, div = pick_unit(n_bytes)
    return f"{n_bytes / div:,.2f} {name}"
