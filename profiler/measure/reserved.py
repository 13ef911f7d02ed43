"""Predicted reserved and nvidia-smi memory of a run: its recorded storages replayed through the caching allocator.

The tensor tracker records every storage it sees allocated, resized and freed (`alloc_log`); on a CUDA run (or a
simulation of one) each of those storages is one request to the caching allocator, in the same order. What the
tracker does not see: the cuBLAS workspace (added by the replay), NCCL buffers and bitsandbytes paged state (outside
the allocator: in neither figure) and the CUDA context (added to the NVML figure from profiler/data/cuda_context.csv).
On fake tensors the sequence is the fake run's: its frees happen when Python drops the last reference, as on CUDA.
"""

from __future__ import annotations

from profiler.allocator.conf import AllocatorConf
from profiler.allocator.context import cuda_context
from profiler.allocator.replay import cublas_workspace_bytes, replay
from profiler.measure.probes.tracker import TensorTracker

SOURCE = "replay of torch 2.13's CUDA caching allocator (profiler.allocator) on the run's storages"


def add_predictions(record: dict, tracker: TensorTracker, conf: AllocatorConf, *, arch: str | None = None,
                    cuda: str | None = None, device_total: int | None = None) -> None:
    """Replay the tracker's alloc_log and add predicted_reserved_bytes (per phase and overall), predicted_nvml_bytes
    and allocator_replay (how) to a finished run's record. `arch` ("sm90"), `cuda` ("12.8"): the target GPU where
    known (a simulation does not know it: the non-Hopper cuBLAS workspace and the any-architecture context)."""
    workspace = cublas_workspace_bytes(arch)
    res = replay(tracker.alloc_log or [], tracker.alloc_marks, conf, device_total=device_total,
                 workspace_bytes=workspace)
    ctx = cuda_context(arch, cuda)
    phases = record.get("phases") or []
    j = 0
    for ph in res.phases:  # the meter's records and the tracker's phases come in the same order
        while j < len(phases) and (phases[j]["phase"], phases[j]["step"]) != (ph.name, ph.step):
            j += 1
        if j < len(phases):
            phases[j]["predicted_reserved_bytes"] = ph.peak_reserved
            j += 1
    record["predicted_reserved_bytes"] = res.peak_reserved
    record["predicted_nvml_bytes"] = res.peak_reserved + ctx.bytes
    record["allocator_replay"] = {
        "source": SOURCE,
        "conf": conf.describe(),
        "peak_allocated_bytes": res.peak_allocated,
        "cublas_workspace_bytes": workspace,
        "gpu_arch": arch,
        "context_bytes": ctx.bytes,
        "context": ctx.label(),
        "events": res.events,
        "seconds": round(res.seconds, 3),
        "retries": res.retries,
        "oom": res.oom,
    }
