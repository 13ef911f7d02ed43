"""Read a torch.cuda.memory._snapshot() trace as an allocation sequence, and the reserved bytes it really had.

Format (torch/cuda/memory.py `_snapshot` docstring, torch 2.13): `device_traces[device]` is a list of TraceEntry
dicts {action, addr, size, stream, ...}; action is "alloc" (size = the bytes requested, before rounding),
"free_requested" (the program freed it), "free_completed" (the allocator took it back: later than free_requested
for blocks used on other streams), "segment_alloc" / "segment_free" (cudaMalloc / cudaFree of a segment),
"segment_map" / "segment_unmap" (expandable segments), "snapshot", "oom". The replay takes alloc and free_completed
(so cross-stream frees land where the allocator saw them); the segment actions give the real reserved bytes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Trace:
    """One device's trace as replay input, and what the real allocator reserved over it."""

    events: list[tuple[int, int]]  # (addr, requested bytes) per alloc, (addr, -1) per completed free
    streams: list[int]  # stream of each event
    real_peak_reserved: int  # max of the running sum of segment_alloc/map - segment_free/unmap sizes
    real_end_reserved: int
    unknown_frees: int  # frees of addresses allocated before the trace began (the trace is incomplete)
    allocs: int
    settings: str | None  # the allocator settings the snapshot reports, where it does


def read_trace(snapshot: dict, device: int = 0) -> Trace:
    """The trace of `device` from a snapshot dict (pickle.load of a _dump_snapshot file)."""
    traces = snapshot.get("device_traces") or []
    if device >= len(traces):
        raise ValueError(f"device: the snapshot has traces for {len(traces)} device(s); allowed: 0..{len(traces) - 1}")
    events: list[tuple[int, int]] = []
    streams: list[int] = []
    live: set[int] = set()
    reserved = peak = unknown = allocs = 0
    for e in traces[device]:
        action = e.get("action")
        if action == "alloc":
            events.append((e["addr"], e["size"]))
            streams.append(int(e.get("stream") or 0))
            live.add(e["addr"])
            allocs += 1
        elif action == "free_completed":
            if e["addr"] in live:
                live.discard(e["addr"])
                events.append((e["addr"], -1))
                streams.append(int(e.get("stream") or 0))
            else:
                unknown += 1
        elif action in ("segment_alloc", "segment_map"):
            reserved += e["size"]
            peak = max(peak, reserved)
        elif action in ("segment_free", "segment_unmap"):
            reserved -= e["size"]
    settings = (snapshot.get("allocator_settings") or {}).get("PYTORCH_CUDA_ALLOC_CONF") or None
    return Trace(events, streams, peak, reserved, unknown, allocs, settings)
