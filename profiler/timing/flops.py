"""The work of each phase of a simulated step: FLOPs and bytes per op class, and the bytes of each collective.

`WorkRecorder` is an optional recorder of profiler.measure.harness (`simulate(cfg, recorder=WorkRecorder())`):
in every phase it enters a TorchDispatchMode on top of the fake mode and the tensor tracker, which sees each
aten op the step runs (the forward recomputed under gradient checkpointing included, in the backward phase),
and stores per phase (`phase["work"]`):
- `matmul_flops`, `matmul_bytes`: ops in torch's own FLOP table (torch/utils/flop_counter.py `flop_registry`,
  the formulas FlopCounterMode uses: mm, addmm, bmm, baddbmm, convolutions, the aten SDPA kernels), 2 FLOPs per
  multiply-add; bytes = the op's inputs read + outputs written.
- `attention_flops`, `attention_bytes`: fused attention. The simulated CUDA flash / memory-efficient kernels
  (profiler.simulate.backend `_FlashAttention`, `_EfficientAttention`) are autograd Functions that only
  allocate, so no counter sees their math: it is counted here by torch's formula (`sdpa_flop_count`: 4·b·h·s·s'·d
  forward; `sdpa_backward_flop_count`: 10·b·h·s·s'·d backward, i.e. 2.5x, the recomputed scores included), from
  the shapes of each F.scaled_dot_product_attention call, the backward when the output's gradient is computed
  (a tensor hook: it fires once per attention backward, also under checkpointing). **Causal: halved** where the
  kernel skips the blocks above the diagonal: flash-attn 2 (FlashAttention-2 paper, Dao 2023, section 3.1.1;
  its benchmarks/benchmark_flash_attention.py `flops()` divides by 2 for causal) and the cutlass
  memory-efficient kernel (its causal loop stops at the diagonal block); torch's FlopCounterMode does not halve
  ("NB: We aren't accounting for causal attention here"). The CPU flash kernel's aten ops are counted the same way.
  The math kernel decomposes into bmm/softmax and is counted by the table as matmul (full s x s: it computes it).
- `other_bytes`: every other op that moves data (elementwise, norms, softmax, copies, the optimizer's foreach
  kernels): inputs read + outputs written (an embedding lookup: the rows it gathers). Views, empty allocations,
  storage resizes and metadata queries (prim.device, sizes) move nothing; only aten and FSDP2's ops are counted.
- `collectives`: kind -> {count, bytes}: the c10d / functional-collective ops the fake process group sees
  (FSDP2's all-gather and reduce-scatter, DDP's all-reduce). bytes = the full (unsharded) payload: the all-gather
  output, the reduce-scatter input, the all-reduce buffer; model.py turns it into ring traffic per rank.
The load phase is not counted. Counting costs time (about one dispatch-mode call per op): it runs only when
time is asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten

NO_TRAFFIC = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
              aten.new_empty.default, aten.new_empty_strided.default, aten.resize_.default,
              aten._unsafe_view.default, aten.lift_fresh.default, aten._local_scalar_dense.default,
              aten.set_.source_Storage, aten.set_.source_Storage_storage_offset, aten.set_.source_Tensor}
CPU_ATTENTION_FWD = {aten._scaled_dot_product_flash_attention_for_cpu}
CPU_ATTENTION_BWD = {aten._scaled_dot_product_flash_attention_for_cpu_backward}
FUSED_SDPA = ("flash", "efficient")  # profiler.simulate.backend.CudaSdpa kernels whose math no op shows
COLLECTIVE_NAMESPACES = ("c10d", "_c10d_functional", "c10d_functional", "_dtensor")
TRAFFIC_NAMESPACES = ("aten", "fsdp")  # prim.device, profiler.* and other metadata ops move no data
METADATA = {aten.sym_size.int, aten.sym_stride.int, aten.sym_numel.default, aten.sym_storage_offset.default,
            aten.is_contiguous.default, aten.is_contiguous.memory_format, aten.is_strides_like_format.default,
            aten.is_non_overlapping_and_dense.default, aten.size.default, aten.stride.default,
            aten.storage_offset.default, aten.numel.default, aten.dim.default, aten.is_same_size.default}


def _registry() -> dict:
    """torch's FLOP formulas keyed by op packet, wrapped to take tensors (FlopCounterMode's own table)."""
    return FlopCounterMode(display=False).flop_registry


def tensor_bytes(x) -> int:
    """Bytes of the tensors in x (a tensor, or a list / tuple of them); 0 for anything else."""
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(tensor_bytes(t) for t in x)
    return 0


def collective_kind(name: str) -> str | None:
    """all_gather / reduce_scatter / all_reduce / broadcast / other from a c10d op name; None for waits."""
    n = name.replace("_", "").lower()
    if "wait" in n or "barrier" in n:
        return None
    for key, kind in (("allgather", "all_gather"), ("reducescatter", "reduce_scatter"), ("allreduce", "all_reduce"),
                      ("broadcast", "broadcast"), ("alltoall", "all_to_all")):
        if key in n:
            return kind
    return "other"


def collective_payload(kind: str, args: tuple, out) -> int:
    """The full payload of one collective: the all-gather's output, the reduce-scatter's input, else the buffer."""
    if kind == "all_gather":
        return tensor_bytes(args[0]) if args and tensor_bytes(args[0]) else tensor_bytes(out)
    if kind == "reduce_scatter":
        return tensor_bytes(args[1]) if len(args) > 1 else tensor_bytes(args[0])
    return tensor_bytes(args[0]) if args else 0


def attention_flops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, backward: bool) -> int:
    """torch's SDPA formula (4·b·h·s·s'·d forward, 2.5x that backward), halved when causal (see the docstring)."""
    if backward:
        f = sdpa_backward_flop_count(tuple(q.shape), tuple(q.shape), tuple(k.shape), tuple(v.shape))
    else:
        f = sdpa_flop_count(tuple(q.shape), tuple(k.shape), tuple(v.shape))
    return f // 2 if causal else f


def empty_work() -> dict:
    return {"matmul_flops": 0, "matmul_bytes": 0, "attention_flops": 0, "attention_bytes": 0, "other_bytes": 0,
            "ops": 0, "collectives": {}}


class _Counting(TorchDispatchMode):
    """Adds each op's FLOPs and bytes to the recorder's current phase, then runs it on the modes below."""

    def __init__(self, recorder: WorkRecorder):
        super().__init__()
        self.rec = recorder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self.rec.count(func, args, kwargs, out)
        except Exception as exc:  # a formula that cannot read these shapes: the phase says so, the run goes on
            self.rec.errors.append(f"{func}: {type(exc).__name__}: {exc}")
        return out


class _SdpaCounter:
    """Wraps whatever F.scaled_dot_product_attention is during a phase (the simulation's CudaSdpa): where the
    kernel it picks is a fused stand-in (its `used` counter says which), adds the formula's FLOPs."""

    def __init__(self, inner, recorder: WorkRecorder):
        self.inner = inner
        self.rec = recorder

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *args, **kwargs):
        used = getattr(self.inner, "used", None)
        before = dict(used) if used is not None else None
        out = self.inner(query, key, value, attn_mask, dropout_p, is_causal, *args, **kwargs)
        if before is None:
            return out
        picked = [k for k, n in used.items() if n > before.get(k, 0)]
        if not picked or picked[0] not in FUSED_SDPA:
            return out
        causal = bool(is_causal) and attn_mask is None
        qkv = tensor_bytes((query, key, value))
        self.rec.add_attention(attention_flops(query, key, value, causal, backward=False), qkv + 2 * tensor_bytes(out))
        if isinstance(out, torch.Tensor) and out.requires_grad:
            shapes = (query.detach(), key.detach(), value.detach())  # fake tensors: shapes only, no data kept alive
            flops = attention_flops(*shapes, causal, backward=True)
            moved = 2 * qkv + 3 * tensor_bytes(out)  # reads q, k, v, out, dout; writes dq, dk, dv

            def on_grad(grad):
                self.rec.add_attention(flops, moved)

            out.register_hook(on_grad)
        return out


class WorkRecorder:
    """profiler.measure.harness.PhaseRecorder counting FLOPs and bytes per phase (see the module docstring)."""

    key = "work"

    def __init__(self, detail: bool = False):
        self.registry = _registry()
        self.detail = detail  # also bytes per op name (phase["work"]["other_by_op"]): to see where bytes go
        self.current: dict | None = None
        self.errors: list[str] = []
        self._last: dict | None = None

    @contextmanager
    def phase(self, name: str, step: int | None, warmup: bool) -> Iterator[None]:
        if name == "load":
            self._last = None
            yield
            return
        self.current = empty_work()
        self.errors = []
        import torch.nn.functional as F

        inner = F.scaled_dot_product_attention
        F.scaled_dot_product_attention = _SdpaCounter(inner, self)
        try:
            with _Counting(self):
                yield
        finally:
            F.scaled_dot_product_attention = inner
            work, self.current = self.current, None
            if self.errors:
                work["errors"] = self.errors[:5]
            self._last = work

    def take(self) -> dict | None:
        out, self._last = self._last, None
        return out

    def add_attention(self, flops: int, moved: int) -> None:
        if self.current is not None:
            self.current["attention_flops"] += flops
            self.current["attention_bytes"] += moved

    def count(self, func, args: tuple, kwargs: dict, out) -> None:
        w = self.current
        if w is None or func in NO_TRAFFIC or func in METADATA:
            return
        ns = func.namespace
        if ns not in COLLECTIVE_NAMESPACES and (ns not in TRAFFIC_NAMESPACES or func.is_view):
            return
        w["ops"] += 1
        packet = func._overloadpacket
        if ns in COLLECTIVE_NAMESPACES:
            kind = collective_kind(func.__name__)
            if kind is not None:
                c = w["collectives"].setdefault(kind, {"count": 0, "bytes": 0})
                c["count"] += 1
                c["bytes"] += collective_payload(kind, args, out)
            return
        if packet is aten.embedding:  # a gather: the rows it reads, not the whole table
            moved = 2 * tensor_bytes(out) + tensor_bytes(args[1])
        else:
            moved = (sum(tensor_bytes(a) for a in args) + sum(tensor_bytes(v) for v in kwargs.values())
                     + tensor_bytes(out))
        if func in CPU_ATTENTION_FWD or func in CPU_ATTENTION_BWD:
            q, k, v = args[:3] if func in CPU_ATTENTION_FWD else args[1:4]
            causal = bool(args[4] if func in CPU_ATTENTION_FWD and len(args) > 4 else
                          args[7] if len(args) > 7 else kwargs.get("is_causal", False))
            causal = causal and kwargs.get("attn_mask") is None
            w["attention_flops"] += attention_flops(q, k, v, causal, backward=func in CPU_ATTENTION_BWD)
            w["attention_bytes"] += moved
            return
        formula = self.registry.get(packet)
        if formula is not None:
            w["matmul_flops"] += formula(*args, **kwargs, out_val=out)
            w["matmul_bytes"] += moved
        else:
            w["other_bytes"] += moved
            if self.detail:
                by = w.setdefault("other_by_op", {})
                by[str(packet)] = by.get(str(packet), 0) + moved


def step_work(record: dict) -> dict:
    """The work of the record's last (steady) step: the phases of that step summed, and per phase."""
    phases = [p for p in record.get("phases", []) if p.get("work") is not None and p.get("step") is not None]
    if not phases:
        raise ValueError("the record has no counted phases (simulate with recorder=WorkRecorder())")
    last = max(p["step"] for p in phases)
    total = empty_work()
    per_phase = {}
    for p in phases:
        if p["step"] != last:
            continue
        per_phase[p["phase"]] = p["work"]
        for k, v in p["work"].items():
            if k == "collectives":
                for kind, c in v.items():
                    t = total["collectives"].setdefault(kind, {"count": 0, "bytes": 0})
                    t["count"] += c["count"]
                    t["bytes"] += c["bytes"]
            elif k not in ("errors", "other_by_op"):
                total[k] += v
    total["phases"] = per_phase
    total["step"] = last
    return total
