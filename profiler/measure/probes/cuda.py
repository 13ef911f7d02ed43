"""CUDA allocator probe: per-phase peaks from torch.cuda (peaks reset at each phase start)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class CudaPhase:
    allocated_bytes: int = 0
    peak_allocated_bytes: int = 0
    reserved_bytes: int = 0
    peak_reserved_bytes: int = 0
    seconds: float = 0.0


@dataclass
class CudaProbe:
    """Synchronize and reset the peak at a phase start, synchronize and read at its end."""

    phases: list[CudaPhase] = field(default_factory=list)

    @contextmanager
    def phase(self):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        rec = CudaPhase()
        t0 = time.perf_counter()
        try:
            yield rec
        finally:
            try:
                torch.cuda.synchronize()
            except RuntimeError:
                pass  # after an OOM the stream may still be usable; the peak below is what matters
            rec.seconds = time.perf_counter() - t0
            rec.allocated_bytes = torch.cuda.memory_allocated()
            rec.peak_allocated_bytes = torch.cuda.max_memory_allocated()
            rec.reserved_bytes = torch.cuda.memory_reserved()
            rec.peak_reserved_bytes = torch.cuda.max_memory_reserved()
            self.phases.append(rec)


def memory_stats() -> dict[str, int]:
    """The integer part of torch.cuda.memory_stats() (allocator counters, retries, OOMs) for the record."""
    return {k: int(v) for k, v in torch.cuda.memory_stats().items() if isinstance(v, int | float)}


def free_bytes() -> int | None:
    try:
        return int(torch.cuda.mem_get_info()[0])
    except RuntimeError:
        return None
