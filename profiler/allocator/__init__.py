"""A replay of PyTorch's CUDA caching allocator: from an allocation sequence to the memory it reserves.

Reads only an allocation sequence (sizes, streams, phase marks), never a measurement: `simulate` feeds it the
storages of a fake run, scripts/replay_snapshot.py the trace of a real one. `conf` parses the allocator
settings (PYTORCH_ALLOC_CONF / PYTORCH_CUDA_ALLOC_CONF), `caching` replays the allocator's rules, `replay` turns a
recorded sequence into per-phase reserved peaks, `snapshot` reads torch.cuda.memory._snapshot() traces, and
`context` the CUDA-context figure that nvidia-smi adds (profiler/data/cuda_context.csv). See docs/allocator.md.
"""
