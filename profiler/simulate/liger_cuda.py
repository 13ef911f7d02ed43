"""Liger's fused linear cross-entropy as a CUDA run executes it, on the fake tensors of a `device: cuda` simulation.

Liger's per-chunk cross-entropy is a Triton kernel (liger_kernel/ops/cross_entropy.py `liger_cross_entropy_kernel`,
launched at ops/fused_linear_cross_entropy.py:144) that writes each row's loss into `loss_1d` and overwrites the
logits chunk with its gradient in place: it allocates nothing. The torch mirror (profiler/measure/liger_flce.py)
computes the same values with torch ops and their float32 temporaries of the chunk; inside `liger_cuda_kernels()` that
step allocates nothing, as the real kernel.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def _launch(logits, target, loss_out, n_non_ignore, softcap, has_gradients) -> None:
    """The Triton kernel's launch: in place, no allocation."""


@contextmanager
def liger_cuda_kernels(enabled: bool = True) -> Iterator[None]:
    """Inside the block, the mirror's cross-entropy step allocates what Liger's Triton kernel does (nothing)."""
    if not enabled:
        yield
        return
    import profiler.measure.liger_flce as lf

    saved = lf.cross_entropy_kernel
    lf.cross_entropy_kernel = _launch
    try:
        yield
    finally:
        lf.cross_entropy_kernel = saved
