"""Replay a recorded allocation sequence through the caching allocator: peak reserved per phase and overall.

The sequence is the tensor tracker's (profiler.measure.probes.tracker, `alloc_log`): a list of (key, nbytes) where
nbytes >= 0 allocates storage `key` (a key already live is a resize: torch's resize_ allocates the new size, copies,
then frees the old block), and nbytes == -1 frees it; zero-byte storages allocate nothing (CUDAAllocator::allocate
skips size 0). Phase marks are (event index, 1 = start / 0 = end, phase name, step): as the CUDA probe resets the peak
statistics at each phase start, each phase's peak is its own.

What the tracker cannot see and the replay adds: the cuBLAS workspace (at::cuda::getNewWorkspace allocates it
through the caching allocator at the first cuBLAS call and keeps it per handle and stream; `workspace_bytes`,
allocated when the first forward phase starts). NCCL buffers and bitsandbytes paged (managed) optimizer state do
not go through the allocator: outside the replay, as is the CUDA context (profiler.allocator.context).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from profiler.allocator.caching import AllocatorOutOfMemory, CachingAllocator
from profiler.allocator.conf import AllocatorConf


def cublas_workspace_bytes(arch: str | None, environ: dict[str, str] | None = None) -> int:
    """CublasHandlePool.cpp parseChosenWorkspaceSize (read in the code index): CUBLAS_WORKSPACE_CONFIG ":SIZE:COUNT"
    sums SIZE x COUNT KiB; unset, "4096 * 8 * 1024" on sm90 (Hopper) else "4096 * 1024 * 2 + 16 * 1024 * 8". The
    cuBLASLt workspace is the same buffer (TORCH_CUBLASLT_UNIFIED_WORKSPACE unset means unified)."""
    env = os.environ if environ is None else environ
    text = env.get("CUBLAS_WORKSPACE_CONFIG")
    if text:
        pairs = re.findall(r":([0-9]+):([0-9]+)", text)
        if pairs:
            return sum(int(a) * 1024 * int(b) for a, b in pairs)
    return 4096 * 8 * 1024 if arch == "sm90" else 4096 * 1024 * 2 + 16 * 1024 * 8


@dataclass
class PhaseReserved:
    """One phase of the replay (bytes)."""

    name: str
    step: int | None
    peak_reserved: int
    end_reserved: int
    peak_allocated: int  # the allocator's allocated_bytes: rounded block sizes, as max_memory_allocated counts


@dataclass
class ReplayResult:
    """What the replay predicts for the whole sequence."""

    peak_reserved: int
    peak_allocated: int
    end_reserved: int
    phases: list[PhaseReserved]
    conf: AllocatorConf
    events: int
    seconds: float
    oom: str | None = None  # the replayed OOM (only with a capacity), naming the phase
    retries: int = 0  # num_alloc_retries: times the cache was freed to make room
    segments: int = 0  # cudaMalloc segments held at the end
    notes: list[str] = field(default_factory=list)


def replay(events: Sequence[tuple[int, int]], marks: Sequence[tuple[int, int, str, int | None]] = (),
           conf: AllocatorConf | None = None, capacity: int | None = None, device_total: int | None = None,
           streams: Sequence[int] | None = None, record_streams: dict[int, int] | None = None,
           workspace_bytes: int = 0) -> ReplayResult:
    """Run every event through a CachingAllocator. `streams[i]`: the stream of event i (default 0);
    `record_streams`: key -> another stream its storage was used on (its free then waits for an event);
    `workspace_bytes`: the cuBLAS workspace, allocated for good when the first forward phase starts."""
    t0 = time.perf_counter()
    alloc = CachingAllocator(conf, capacity=capacity, device_total=device_total)
    malloc, free = alloc.malloc, alloc.free
    live: dict = {}
    phases: list[PhaseReserved] = []
    open_phase: tuple[str, int | None] | None = None
    mark_at = [m[0] for m in marks] + [len(events) + 1]
    mi = 0
    oom = None
    top = [0, 0]  # overall peaks (reserved, allocated), kept across the per-phase resets

    workspace = [workspace_bytes]

    def reset() -> None:
        top[0], top[1] = max(top[0], alloc.peak_reserved), max(top[1], alloc.peak_allocated)
        alloc.reset_peak()

    def close(name: str, step: int | None) -> None:
        phases.append(PhaseReserved(name, step, alloc.peak_reserved, alloc.reserved, alloc.peak_allocated))

    i = 0
    try:
        for i, (key, n) in enumerate(events):
            while mark_at[mi] <= i:
                _, start, name, step = marks[mi]
                if start:
                    reset()
                    open_phase = (name, step)
                    if workspace[0] and name == "forward":
                        live[object()] = malloc(workspace[0])
                        workspace[0] = 0
                elif open_phase is not None:
                    close(name, step)
                    open_phase = None
                mi += 1
            if n < 0:
                b = live.pop(key, None)
                if b is not None:
                    free(b)
                continue
            old = live.pop(key, None)
            if n:
                b = malloc(n) if streams is None else malloc(n, streams[i])
                live[key] = b
                if record_streams and key in record_streams:
                    alloc.record_stream(b, record_streams[key])
            if old is not None:
                free(old)
    except AllocatorOutOfMemory as exc:
        where = f" in phase {open_phase[0]!r}" + (f" (step {open_phase[1]})" if open_phase[1] is not None else "") \
            if open_phase else ""
        oom = f"{exc}{where} at event {i}"
    while mi < len(marks):  # marks after the last event (a phase that allocated nothing at its end)
        _, start, name, step = marks[mi]
        if start:
            reset()
            open_phase = (name, step)
        elif open_phase is not None:
            close(name, step)
            open_phase = None
        mi += 1
    if open_phase is not None:
        close(*open_phase)
    reset()
    overall, overall_alloc = top
    return ReplayResult(overall, overall_alloc, alloc.reserved, phases, alloc.conf, len(events),
                        time.perf_counter() - t0, oom, alloc.num_alloc_retries, len(alloc.segment_sizes()))
