"""`torch.cuda` answered as the named GPU inside the dry-run's child: the script and its libraries take their CUDA path.

The tensors stay fake *CPU* tensors (autograd aborts on fake CUDA tensors in a CPU torch; profiler.simulate.backend),
so `.device` of a tensor or a model still says `cpu`; what a script or library *asks* about CUDA is answered as
the GPU of `simulate --gpu NAME` would answer it (its preset in profiler/data/gpus.csv):

- `is_available`, `device_count`: True, 1 (one simulated GPU; asking about `cuda:1` ends the run with one line).
- `current_device` 0; `set_device(0 | "cuda" | "cuda:0" | torch.device)` accepted.
- `get_device_name`: the preset's `device_name` (as torch reports it on that GPU).
- `get_device_capability`: the preset's `compute_capability` (no --gpu: (8, 0), the sm80 rules of `auto`).
- `get_device_properties`: name, total_memory (the preset's), major, minor; no --gpu: one line, exit 2.
- `is_bf16_supported(including_emulation=True)`: as torch/cuda/__init__.py answers: major >= 8, else
  `including_emulation` (torch then creates a bf16 tensor on the device, which every CUDA GPU can).
- `memory_allocated` / `max_memory_allocated`: the tracker's live / peak tensor bytes
  (profiler.measure.probes.tracker; not rounded to the allocator's 512-byte blocks); before the tracker opens
  (the first forward, or the Trainer's `on_train_begin`): the built models' fake weights.
- `memory_reserved` / `max_memory_reserved`: the same figures (the caching allocator is not replayed during the
  run: a lower bound). `reset_peak_memory_stats` / `reset_max_memory_allocated`: the peak restarts from the live
  bytes. `memory_stats`: those four figures under torch's key names.
- `mem_get_info`: (total - CUDA context (profiler.allocator.context) - allocated, total).
- `synchronize`, `empty_cache`, `ipc_collect`: nothing to do.
- `torch.autocast("cuda", ...)` also enters CPU autocast with the same dtype (the fake tensors carry the
  AutocastCPU key, where the simulation put CUDA's op lists); the CUDA flags are set too, so
  `torch.is_autocast_enabled()` answers as on the GPU (peft's LoRA layers ask it).
- `GradScaler` (fp16) steps the optimizer: fake gradients have no values, no overflow is assumed.

bitsandbytes itself gets torch's own answers (its import loads its CUDA library when CUDA is available; its
layers are the simulation's stand-ins in the dry-run): callers in `NATIVE_CALLERS` see the real functions.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

NATIVE_CALLERS = ("bitsandbytes",)


@dataclass(frozen=True)
class DeviceProperties:
    """What `torch.cuda.get_device_properties` gives, for the fields a preset knows."""

    name: str
    total_memory: int
    major: int
    minor: int
    is_integrated: bool = False
    is_multi_gpu_board: bool = False

    def __repr__(self) -> str:
        return (f"_CudaDeviceProperties(name='{self.name}', major={self.major}, minor={self.minor}, "
                f"total_memory={self.total_memory // 2**20}MB (simulated))")


@dataclass
class Memory:
    """Where the memory answers come from: callables of the child (profiler.dryrun.child)."""

    allocated: Callable[[], int]
    peak: Callable[[], int]
    reset_peak: Callable[[], None]


def _native_caller() -> bool:
    name = sys._getframe(2).f_globals.get("__name__", "")
    return name.split(".")[0] in NATIVE_CALLERS


class SimulatedCuda:
    """The answers of the module docstring's table for one GPU preset (None: no --gpu, the sm80 rules)."""

    def __init__(self, gpu, memory: Memory, stop: Callable[[str], None]):
        self.gpu = gpu
        self.memory = memory
        self.stop = stop
        cc = gpu.compute_capability if gpu is not None and gpu.compute_capability else "8.0"
        self.capability = tuple(int(x) for x in cc.split("."))
        self.name = (gpu.device_name or gpu.name) if gpu is not None else "simulated CUDA device (sm80 rules)"
        self.asked: Counter[str] = Counter()  # torch.cuda functions answered (for the result line)
        self.autocast: Counter[str] = Counter()  # dtypes of the enabled torch.autocast("cuda") regions entered

    # ---- devices -------------------------------------------------------------------------------
    def index(self, device=None) -> int:
        """0 for the one simulated GPU; another index or a non-CUDA device ends the run with one line."""
        if device is None:
            return 0
        d = torch.device(device) if isinstance(device, str) else device
        if isinstance(d, torch.device):
            if d.type != "cuda":
                self.stop(f"torch.cuda was asked about device {str(d)!r}; the dry-run simulates one CUDA device")
            d = d.index if d.index is not None else 0
        if d not in (0, -1):
            self.stop(f"torch.cuda was asked about device cuda:{d}; the dry-run simulates one GPU (device_count() "
                      f"is 1); multi-GPU scripts: `simulate CONFIG` with parallel.world_size")
        return 0

    def properties(self, device=None) -> DeviceProperties:
        self.index(device)
        if self.gpu is None:
            self.stop("the script asked torch.cuda.get_device_properties() (total memory) but no GPU was named; "
                      "allowed: simulate --gpu NAME (a preset of profiler/data/gpus.csv, e.g. rtx4090)")
        major, minor = self.capability
        return DeviceProperties(self.name, self.gpu.total_bytes, major, minor)

    def total(self) -> int:
        return self.properties().total_memory

    # ---- memory --------------------------------------------------------------------------------
    def mem_get_info(self, device=None) -> tuple[int, int]:
        from profiler.allocator.context import cuda_context

        total = self.properties(device).total_memory
        context = cuda_context(self.gpu.arch if self.gpu.arch != "auto" else None).bytes
        return max(0, total - context - self.memory.allocated()), total

    def memory_stats(self, device=None) -> dict[str, int]:
        self.index(device)
        now, peak = self.memory.allocated(), self.memory.peak()
        return {"allocated_bytes.all.current": now, "allocated_bytes.all.peak": peak,
                "reserved_bytes.all.current": now, "reserved_bytes.all.peak": peak,
                "num_alloc_retries": 0, "num_ooms": 0}

    def patches(self) -> list[tuple[object, str, object]]:
        """(module, attribute, value) for profiler.measure.patches.patched: torch.cuda and torch.cuda.memory."""
        native = {n: getattr(torch.cuda, n) for n in ("is_available", "device_count")}

        def unless_native(name: str, fake):
            def answer(*args, **kwargs):
                return native[name](*args, **kwargs) if _native_caller() else fake(*args, **kwargs)

            answer.__name__ = name
            return answer

        def bf16(including_emulation: bool = True) -> bool:
            return self.capability[0] >= 8 or bool(including_emulation)

        def memory(fn):
            def answer(device=None):
                self.index(device)
                return fn()

            return answer

        def nothing(*args, **kwargs):
            return None

        def reset(device=None):
            self.index(device)
            self.memory.reset_peak()

        def set_device(device):
            self.index(device)

        table = {
            "is_available": unless_native("is_available", lambda: True),
            "device_count": unless_native("device_count", lambda: 1),
            "current_device": lambda: 0,
            "set_device": set_device,
            "get_device_name": lambda device=None: (self.index(device), self.name)[1],
            "get_device_capability": lambda device=None: (self.index(device), self.capability)[1],
            "get_device_properties": self.properties,
            "is_bf16_supported": bf16,
            "mem_get_info": self.mem_get_info,
            "memory_allocated": memory(self.memory.allocated),
            "max_memory_allocated": memory(self.memory.peak),
            "memory_reserved": memory(self.memory.allocated),
            "max_memory_reserved": memory(self.memory.peak),
            "reset_peak_memory_stats": reset,
            "reset_max_memory_allocated": reset,
            "memory_stats": self.memory_stats,
            "synchronize": nothing,
            "empty_cache": nothing,
            "ipc_collect": nothing,
        }
        table = {name: self._counted(name, fn) for name, fn in table.items()}
        out = [(torch.cuda, name, fn) for name, fn in table.items()]
        out += [(torch.cuda.memory, name, fn) for name, fn in table.items() if hasattr(torch.cuda.memory, name)]
        return out + self._autocast_patches() + _grad_scaler_patches()

    def _counted(self, name: str, fn):
        def answer(*args, **kwargs):
            if not _native_caller():
                self.asked[name] += 1
            return fn(*args, **kwargs)

        answer.__name__ = name
        return answer

    def _autocast_patches(self) -> list[tuple[object, str, object]]:
        """`torch.autocast("cuda")` also enters CPU autocast with the same settings (and leaves it on exit)."""
        from torch.amp.autocast_mode import autocast

        native_enter, native_exit = autocast.__enter__, autocast.__exit__
        seen = self.autocast

        def __enter__(self):
            out = native_enter(self)
            if getattr(self, "device", None) == "cuda" and not torch._jit_internal.is_scripting():
                cpu = torch.autocast("cpu", dtype=self.fast_dtype, enabled=self._enabled,
                                     cache_enabled=self._cache_enabled)
                cpu.__enter__()
                self.__dict__.setdefault("_dryrun_cpu", []).append(cpu)
                if self._enabled:
                    seen[str(self.fast_dtype).removeprefix("torch.")] += 1
            return out

        def __exit__(self, exc_type, exc_val, exc_tb):
            stack = self.__dict__.get("_dryrun_cpu")
            if stack:
                stack.pop().__exit__(exc_type, exc_val, exc_tb)
            return native_exit(self, exc_type, exc_val, exc_tb)

        return [(autocast, "__enter__", __enter__), (autocast, "__exit__", __exit__)]


def _grad_scaler_patches() -> list[tuple[object, str, object]]:
    """GradScaler (fp16) steps the optimizer unless a gradient overflowed (torch/amp/grad_scaler.py
    `_maybe_opt_step`: `if not sum(v.item() ...)`); fake gradients have no values: no overflow is assumed."""
    from torch.amp.grad_scaler import GradScaler

    def _maybe_opt_step(self, optimizer, optimizer_state, *args, **kwargs):
        return optimizer.step(*args, **kwargs)

    return [(GradScaler, "_maybe_opt_step", _maybe_opt_step)]
