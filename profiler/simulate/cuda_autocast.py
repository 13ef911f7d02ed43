"""CUDA's autocast op lists applied to the fake CPU tensors of a `device: cuda` simulation.

A fake run's tensors are CPU tensors (profiler.simulate.backend says why), and the harness enters
`torch.autocast("cpu", dtype)`, so torch would cast by its *CPU* lists (the AutocastCPU kernels of
aten/src/ATen/autocast_mode.cpp), which differ from CUDA's: on CUDA `softmax`, `log_softmax`, `sum`,
`cumsum`, `pow`, `rsqrt`, `exp`, `rms_norm`, `layer_norm`, `nll_loss` run in fp32, `einsum` and `mv` in
the lower precision; on CPU most of those run as given.

Mechanism, and why this one: while `cuda_autocast()` is active, a `torch.library.Library("aten", "IMPL")`
registers, at the **AutocastCPU** dispatch key, one Python kernel per op of CUDA's lists (data:
profiler/data/cuda_autocast_ops.json, read from torch 2.13's autocast_mode.h and checked in the tests
against the AutocastCUDA kernels the installed torch registers) and a fallthrough for every other op CPU
autocast casts. So the casts happen where CUDA's do: above autograd (the cast is a recorded `_to_copy`, and
the op saves its cast inputs for backward, which is what autocast's memory saving is), only inside an
autocast region, and through gradient checkpointing's recompute (it re-enters autocast for the tensors'
device type). A TorchDispatchMode would sit below autograd, where a cast no longer changes what is saved;
a TorchFunctionMode sees Python calls, not the aten ops the lists name. Leaving the block destroys the
library, which restores torch's own CPU kernels.

Each kernel follows autocast_mode.h's policy for its list (WrapFunction_ and cached_cast):
- lower_precision_fp: every floating (non-fp64) Tensor / Tensor? / Tensor[] argument cast to the autocast
  dtype; an fp32 leaf that requires grad (a parameter) is cast once per autocast region and the copy kept in
  a cache until the outermost region exits (`torch.clear_autocast_cache`), as the C++ cache does;
- fp32: those arguments cast to fp32; fp32_set_opt_dtype: `dtype=float32` when the first argument is
  floating and no dtype was given; fp32_append_dtype: `norm` redispatched to its dtype overload;
- promote: every argument cast to the widest floating type among them; banned: `binary_cross_entropy` fails.
`Tensor?[]` arguments (index_put's indices) are not cast, as in C++.
"""

from __future__ import annotations

import functools
import json
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

OPS_JSON = Path(__file__).resolve().parent.parent / "data" / "cuda_autocast_ops.json"
_C = torch._C


@functools.cache
def cuda_autocast_ops() -> dict:
    """The CUDA op lists (with their source and commit) from profiler/data/cuda_autocast_ops.json."""
    return json.loads(OPS_JSON.read_text())


def _overload(name: str):
    op, _, overload = name.partition(".")
    packet = getattr(torch.ops.aten, op)
    return getattr(packet, overload or "default")


def _tensor_slots(schema) -> tuple[list[int], list[str]]:
    """Positions and names of the Tensor, Tensor? and Tensor[] arguments (what cached_cast casts)."""
    castable = {"Tensor", "Optional[Tensor]", "List[Tensor]"}
    slots = [(i, arg.name) for i, arg in enumerate(schema.arguments) if str(arg.type) in castable]
    return [i for i, _ in slots], [name for _, name in slots]


def _eligible(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


class _Casts:
    """The cast cache of one simulation: fp32 leaf -> its lower-precision copy, until autocast is left."""

    def __init__(self):
        self.cache: dict[int, tuple[weakref.ref, torch.Tensor]] = {}

    def clear(self) -> None:
        self.cache.clear()

    def cast(self, to: torch.dtype, t):
        if isinstance(t, (list, tuple)):
            return type(t)(self.cast(to, x) for x in t)
        if not _eligible(t) or t.dtype == to:
            return t
        lower = torch.get_autocast_dtype("cpu")
        if (to == lower and t.dtype == torch.float32 and t.requires_grad and t.is_leaf and not t._is_view()
                and torch.is_autocast_cache_enabled()):
            hit = self.cache.get(id(t))
            if hit is not None and hit[0]() is t:
                return hit[1]
            out = t.to(to)
            self.cache[id(t)] = (weakref.ref(t), out)
            return out
        return t.to(to)


def _promote_type(args) -> torch.dtype:
    """autocast_mode.h `promote_type`: fp32 wins over the lower precision; fp64 arguments are ignored."""
    current = torch.get_autocast_dtype("cpu")
    for a in args:
        for t in (a if isinstance(a, (list, tuple)) else (a,)):
            if _eligible(t) and t.dtype == torch.float32:
                current = torch.float32
    return current


def _kernel(name: str, policy: str, casts: _Casts, target: str | None = None):
    op = _overload(name)
    pos, kw = _tensor_slots(op._schema)
    exclude = _C.DispatchKeySet(_C.DispatchKey.AutocastCPU)
    dtype_at = next((i for i, a in enumerate(op._schema.arguments) if a.name == "dtype"), None)

    def set_opt_dtype(args, kwargs):
        """dtype=float32 where the caller gave none (positionally or by name)."""
        if dtype_at is not None and dtype_at < len(args):
            if args[dtype_at] is None:
                args = (*args[:dtype_at], torch.float32, *args[dtype_at + 1:])
        elif kwargs.get("dtype") is None:
            kwargs = {**kwargs, "dtype": torch.float32}
        return args, kwargs

    def call(to, args, kwargs, fn=op):
        args = tuple(casts.cast(to, a) if i in pos else a for i, a in enumerate(args))
        kwargs = {k: casts.cast(to, v) if k in kw else v for k, v in kwargs.items()}
        return fn(*args, **kwargs)

    def kernel(*args, **kwargs):
        with _C._ExcludeDispatchKeyGuard(exclude):
            if policy == "lower_precision_fp":
                return call(torch.get_autocast_dtype("cpu"), args, kwargs)
            if policy == "fp32":
                return call(torch.float32, args, kwargs)
            if policy == "promote":
                slots = [a for i, a in enumerate(args) if i in pos] + [v for k, v in kwargs.items() if k in kw]
                return call(_promote_type(slots), args, kwargs)
            if policy == "fp32_set_opt_dtype":
                if _eligible(args[0]):
                    args, kwargs = set_opt_dtype(args, kwargs)
                return op(*args, **kwargs)
            if policy == "fp32_append_dtype":
                if _eligible(args[0]):
                    return _overload(target)(*args, dtype=torch.float32, **kwargs)
                return op(*args, **kwargs)
            raise RuntimeError(f"torch.nn.functional.{name} is unsafe to autocast (CUDA autocast bans it); "
                               "use binary_cross_entropy_with_logits")

    return kernel


def _policies() -> dict[str, tuple[str, str | None]]:
    data = cuda_autocast_ops()
    out: dict[str, tuple[str, str | None]] = {}
    for policy in ("lower_precision_fp", "fp32", "fp32_set_opt_dtype", "promote", "banned"):
        out.update({name: (policy, None) for name in data[policy]})
    out.update({name: ("fp32_append_dtype", target) for name, target in data["fp32_append_dtype"].items()})
    return out


def lower_precision(*tensors):
    """The lower-precision policy by hand, for a call made above the dispatcher (CudaSdpa): each floating
    tensor cast to the autocast dtype when autocast is on, else returned as is."""
    if not torch.is_autocast_enabled("cpu"):
        return tensors
    to = torch.get_autocast_dtype("cpu")
    return tuple(t.to(to) if _eligible(t) and t.dtype != to else t for t in tensors)


def no_autocast():
    """What an autocast kernel runs its op under: the AutocastCPU key excluded (autocast_mode.h)."""
    return _C._ExcludeDispatchKeyGuard(_C.DispatchKeySet(_C.DispatchKey.AutocastCPU))


def cpu_autocast_ops() -> list[str]:
    """The ops the installed torch registers an AutocastCPU kernel for (overload names, without `aten::`)."""
    return [n.removeprefix("aten::") for n in _C._dispatch_get_all_op_names()
            if n.startswith("aten::") and _C._dispatch_has_kernel_for_dispatch_key(n, "AutocastCPU")]


@contextmanager
def cuda_autocast() -> Iterator[_Casts]:
    """Inside the block, `torch.autocast("cpu", ...)` casts as CUDA autocast does (module docstring)."""
    casts = _Casts()
    lib = torch.library.Library("aten", "IMPL")
    native_clear = torch.clear_autocast_cache

    def clear_autocast_cache():
        casts.clear()
        native_clear()

    policies = _policies()
    try:
        with warnings.catch_warnings():  # "Overriding a previously registered kernel": that is the point
            warnings.simplefilter("ignore")
            for name, (policy, target) in policies.items():
                if name.startswith("cudnn_"):  # no CPU schema use: CUDA-only ops
                    continue
                lib.impl(name, _kernel(name, policy, casts, target), "AutocastCPU")
            for name in cpu_autocast_ops():
                if name.replace(".default", "") not in policies:
                    lib.impl(name, torch.library.fallthrough_kernel, "AutocastCPU")
        torch.clear_autocast_cache = clear_autocast_cache
        yield casts
    finally:
        torch.clear_autocast_cache = native_clear
        casts.clear()
        lib._destroy()
