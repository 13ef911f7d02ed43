"""TRL's chunked LM-head loss as a CUDA run executes it, on the fake CPU tensors of a `device: cuda` simulation.

On CUDA, trl 1.16 (trl/kernels/chunked_logprob.py) folds each [4096, 32768] logits tile with a Triton kernel that
writes into buffers it was given (`_forward_kernel`, `_backward_kernel`: no allocation), and accumulates the
gradient GEMMs with `torch.addmm(..., out_dtype=float32, out=acc)` (`_addmm_fp32`: none either); on a device
without Triton the same steps run as torch ops with float32 temporaries of the whole tile. Fake tensors are CPU
tensors, so inside `trl_cuda_kernels()` the kernels module takes the Triton path with kernels that allocate
nothing, as the real ones. trl/trainer/utils.py then scores only the positions with a label ("compact",
`hidden_states[mask]`: a copy of those rows); a boolean-mask index has a value-dependent shape that fake tensors
cannot answer, so the non-compact call is kept and the rows are copied once (every label of the harness's batch
is valid, so the compact rows are all rows). The per-token outputs differ from the compact path by a few
bytes per token (masked_fill instead of masked_scatter).
"""

from __future__ import annotations

import importlib.util
import types
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class _Launch:
    """`kernel[grid](...)`: a Triton launch that writes in place and allocates nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _addmm_in_place(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """`torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)`: accumulates into acc, no temporary."""


def _compact_rows(fn):
    class _Compact:
        @staticmethod
        def apply(hidden, *args):
            if hidden._base is not None:  # a view of the backbone's output: `hidden_states[mask]` copies the rows
                hidden = hidden.clone()
            return fn.apply(hidden, *args)

    return _Compact


@contextmanager
def trl_cuda_kernels(enabled: bool = True) -> Iterator[None]:
    """Inside the block, TRL's chunked log-prob function allocates what its CUDA (Triton) path does."""
    if not enabled or importlib.util.find_spec("trl") is None:
        yield
        return
    import trl.kernels.chunked_logprob as ck
    import trl.trainer.utils as tu

    missing = object()
    patches = [(ck, "_use_triton", lambda device: True), (ck, "_forward_kernel", _Launch()),
               (ck, "_backward_kernel", _Launch()), (ck, "_addmm_fp32", _addmm_in_place),
               (ck, "triton", types.SimpleNamespace(cdiv=lambda a, b: -(-a // b))),
               (tu, "_ChunkedLogProbFunction", _compact_rows(tu._ChunkedLogProbFunction))]
    saved = [(obj, name, getattr(obj, name, missing)) for obj, name, _ in patches]
    for obj, name, value in patches:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in saved:
            if value is missing:
                delattr(obj, name)
            else:
                setattr(obj, name, value)
