"""Probes: what measures memory during a phase (CUDA allocator, NVML sampler, live-tensor tracker)."""
