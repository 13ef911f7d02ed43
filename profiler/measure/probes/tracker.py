"""Live tensor bytes by category (weights, gradients, optimizer, activations, temporaries).

Why a tracker of our own: `torch.cuda.max_memory_allocated` gives one number and only on CUDA; PyTorch's
`torch.distributed._tools.mem_tracker.MemTracker` gives categories but trips over frozen (LoRA) parameters,
bitsandbytes tensor subclasses and their quant state. This probe is a `TorchDispatchMode` that sees every
tensor an op returns, on CPU, CUDA and under `FakeTensorMode`, and counts *storages* (views and aliases
once), reading only metadata (`untyped_storage().nbytes()`), never data.

How it decides a category: WEIGHTS, GRADIENTS and OPTIMIZER come from what `attach` registered (parameters,
buffers, bnb quant state; `.grad`; `optimizer.state`); ACTIVATIONS are tensors packed by autograd's
saved-tensor hooks plus whatever is still alive when a phase named "forward" ends; the rest is
TEMPORARIES. A phase keeps an alloc/free log, and on exit replays it to the peak moment and classifies the
storages alive then with what is known at phase end (a storage freed earlier keeps its category at free).

Ordering with FakeTensorMode: either order works. FakeTensorMode is an "infra" mode kept below all user
modes, so the tracker always sees ops first and receives fake outputs with their real `nbytes`.

Run the tests: `python -m pytest tests/test_tracker.py -q`.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils.weak import WeakIdKeyDictionary

from profiler.categories import TRACKER_CATEGORIES, Category

WEIGHTS, GRADIENTS, OPTIMIZER = Category.WEIGHTS, Category.GRADIENTS, Category.OPTIMIZER
ACTIVATIONS, TEMPORARIES = Category.ACTIVATIONS, Category.TEMPORARIES
COMM_BUFFERS = Category.COMM_BUFFERS
# A storage seen in two roles keeps the stronger one: a saved tensor that is a weight stays a weight.
# An FSDP all-gather output registered on a module as its unsharded parameter stays a comm buffer (only
# the local shard is a weight); a reduce-scatter output that becomes the sharded .grad is a gradient.
_RANK = {COMM_BUFFERS: -1, WEIGHTS: 0, OPTIMIZER: 1, GRADIENTS: 2, ACTIVATIONS: 3, TEMPORARIES: 4}


def _stronger(new: Category, old: Category) -> bool:
    if old is COMM_BUFFERS:
        return new is GRADIENTS
    return _RANK[new] < _RANK[old]

_PRIM_DEVICE = torch.ops.prim.device.default


class TrackerOutOfMemory(MemoryError):
    """An allocation would push live tracked bytes above the budget (a simulated CUDA OOM)."""

    def __init__(self, phase: str, requested_bytes: int, live_bytes: int, budget_bytes: int,
                 module: str | None = None):
        self.phase = phase
        self.requested_bytes = requested_bytes
        self.live_bytes = live_bytes
        self.budget_bytes = budget_bytes
        self.module = module
        where = f" in {module}" if module else ""
        super().__init__(
            f"tracker budget exceeded in phase {phase!r}{where}: tried to allocate {requested_bytes} bytes "
            f"with {live_bytes} live, budget {budget_bytes}"
        )

    def __reduce__(self):
        return (type(self), (self.phase, self.requested_bytes, self.live_bytes, self.budget_bytes,
                             self.module))


@dataclass
class PhaseMemory:
    """Tracked memory of one phase; bytes as ints, breakdown keys are `Category` values."""

    name: str
    step: int | None
    peak_bytes: int
    end_bytes: int
    breakdown: dict[str, int]
    end_breakdown: dict[str, int]
    module_at_peak: str | None


class _Rec:
    """One live storage: stable key, bytes, category and the weakref whose callback frees it."""

    __slots__ = ("key", "nbytes", "cat", "dev", "ref")

    def __init__(self, key: int, nbytes: int, cat: Category, dev: str, ref: weakref.ref):
        self.key, self.nbytes, self.cat, self.dev, self.ref = key, nbytes, cat, dev, ref


@dataclass(eq=False)  # compared by identity: removed from the open-phase list with list.remove
class _Open:
    """A phase in progress: live set at start, log offset, running peak."""

    name: str
    step: int | None
    start_live: dict[int, int]
    start_idx: int
    peak: int
    peak_idx: int
    peak_module: str | None = None
    first_key: int = 0  # storages with key >= first_key were allocated during the phase


def _iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Tensors in an op's args or result (tensors, lists/tuples of them, dict values)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _iter_tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _iter_tensors(x)


def _state_tensors(obj: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """Tensors hanging off parameters/modules that are not registered: bnb QuantState, Int8Params.CB/SCB,
    Linear8bitLt.state, plain tensor attributes. Modules themselves are not entered."""
    if depth > 4 or isinstance(obj, torch.nn.Module):
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _state_tensors(x, depth + 1)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _state_tensors(x, depth + 1)
    elif type(obj).__module__.startswith("bitsandbytes") and hasattr(obj, "__dict__"):
        for x in vars(obj).values():
            yield from _state_tensors(x, depth + 1)


def _model_tensors(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    """Every tensor that is model state: parameters, buffers, quant state, tensor attributes."""
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                yield p
                for v in getattr(p, "__dict__", {}).values():
                    yield from _state_tensors(v, 1)
        for b in m._buffers.values():
            if b is not None:
                yield b
        for k, v in vars(m).items():
            if not k.startswith("_"):
                yield from _state_tensors(v, 1)


class TensorTracker(TorchDispatchMode):
    """Counts live tensor storages by category; `phase()` records a `PhaseMemory` per phase.

    `budget_bytes`: raise `TrackerOutOfMemory` when an allocation would exceed it.
    `devices`: device types to count (e.g. {"cuda"}); None counts every device but meta until `attach`
    sees a model on an accelerator, which then narrows counting to that device type.
    """

    def __init__(self, budget_bytes: int | None = None, devices: Iterable[str | torch.device] | None = None):
        super().__init__()
        self.budget_bytes = budget_bytes
        self._devices: set[str] | None = (
            None if devices is None else {torch.device(d).type for d in devices}
        )
        self._by_sid: dict[int, _Rec] = {}  # id(storage) -> record (live only)
        self._by_key: dict[int, _Rec] = {}  # stable key -> record (live only)
        self._next_key = 0
        self._live = 0
        self._peak = 0
        self._cat_bytes = {c: 0 for c in TRACKER_CATEGORIES}
        self._log: list[tuple[int, int]] = []  # (key, nbytes) alloc/resize, (key, -1) free
        self._graveyard: dict[int, Category] = {}  # category of storages freed while a phase is open
        self._open: list[_Open] = []
        self.phases: list[PhaseMemory] = []
        self._models: list[weakref.ref] = []
        self._optimizers: list[weakref.ref] = []
        self._names = WeakIdKeyDictionary()
        self._grad_hooks = WeakIdKeyDictionary()  # param -> handle
        self._opt_hooks: list[Any] = []
        self._mod_stack: list[str] = []
        self._bw_module: str | None = None
        self._depth = 0
        self._session: list[Any] = []  # module hook handles + saved-tensors context while entered
        self._scope: list[Category] = []  # category of storages created inside `scope()` (innermost last)
        # allocation sequence for the caching-allocator replay (profiler.allocator.replay), kept only when set to
        # []: (key, nbytes) per alloc/resize, (key, -1) per free; alloc_marks: (len(alloc_log), 1 start / 0 end,
        # phase, step)
        self.alloc_log: list[tuple[int, int]] | None = None
        self.alloc_marks: list[tuple[int, int, str, int | None]] = []

    # ---- public -------------------------------------------------------------------------------
    @property
    def live_bytes(self) -> int:
        return self._live

    @property
    def peak_bytes(self) -> int:
        """Highest live tracked bytes since construction."""
        return self._peak

    def breakdown(self) -> dict[str, int]:
        """Live bytes by category now."""
        return _public({c.value: n for c, n in self._cat_bytes.items()})

    @contextmanager
    def scope(self, cat: Category):
        """Storages created (or grown) inside are `cat` rather than temporaries: a data-parallel engine's
        collectives run inside `scope(COMM_BUFFERS)` (profiler.measure.parallel)."""
        self._scope.append(cat)
        try:
            yield
        finally:
            self._scope.pop()

    def resized(self, t: torch.Tensor, cat: Category | None = None) -> None:
        """Re-read a storage resized in place (`untyped_storage().resize_` is not a dispatched op: FSDP2
        allocates and frees its unsharded parameters that way); optionally classify it."""
        for st, dev in self._storages(t):
            rec = self._by_sid.get(id(st))
            if rec is None:
                if st.nbytes():
                    self._add(st, dev, cat or self._default_cat())
                continue
            if cat is not None and _stronger(cat, rec.cat):
                self._recat(rec, cat)
            if st.nbytes() != rec.nbytes:
                self._check_budget(st.nbytes() - rec.nbytes)
                self._resize(rec, st.nbytes())

    def classify(self, t: torch.Tensor, cat: Category) -> None:
        """Assign a tensor's storage to `cat` (if stronger than what it is now)."""
        self._classify(t, cat)

    def attach(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Register a model (its state => WEIGHTS, module names) and optionally an optimizer (=> OPTIMIZER).
        Existing storages never seen being created (mmap, from_buffer) join the live set here."""
        before = self._live
        if model is not None:
            if not any(r() is model for r in self._models):
                self._models.append(weakref.ref(model))
            for name, m in model.named_modules():
                self._names[m] = name or type(m).__name__
            if self._devices is None:
                types = {p.device.type for p in model.parameters()} - {"cpu", "meta"}
                if types:
                    self._narrow(types)
        if optimizer is not None and not any(r() is optimizer for r in self._optimizers):
            self._optimizers.append(weakref.ref(optimizer))
            self._opt_hooks.append(optimizer.register_step_post_hook(self._on_step))
        self.rescan()
        if self.budget_bytes is not None and self._live > self.budget_bytes:
            raise TrackerOutOfMemory(self._phase_name(), self._live - before, before, self.budget_bytes)

    def rescan(self) -> None:
        """Re-read attached models and optimizers: weights, `.grad`s, optimizer state (done at phase end)."""
        for ref in self._models:
            model = ref()
            if model is None:
                continue
            for t in _model_tensors(model):
                self._classify(t, WEIGHTS)
            for p in model.parameters():
                if p.grad is not None:
                    self._classify(p.grad, GRADIENTS)
                if p.requires_grad and p not in self._grad_hooks:
                    self._grad_hooks[p] = p.register_post_accumulate_grad_hook(self._on_grad)
        for ref in self._optimizers:
            opt = ref()
            if opt is not None:
                self._on_step(opt)

    @contextmanager
    def phase(self, name: str, step: int | None = None):
        """Measure one phase; appends a `PhaseMemory` to `self.phases` on exit (also on exception).
        Enters the dispatch mode for the phase if it is not already entered."""
        entered = self._depth == 0
        if entered:
            self.__enter__()
        ph = _Open(name, step, {k: r.nbytes for k, r in self._by_key.items()}, len(self._log),
                   self._live, len(self._log), self._current_module(), self._next_key)
        self._open.append(ph)
        if self.alloc_log is not None:
            self.alloc_marks.append((len(self.alloc_log), 1, name, step))
        self._bw_module = None
        try:
            yield self
        finally:
            try:
                self.phases.append(self._close_phase(ph))
                if self.alloc_log is not None:
                    self.alloc_marks.append((len(self.alloc_log), 0, name, step))
            finally:
                self._open.remove(ph)
                if not self._open:
                    self._log.clear()
                    self._graveyard.clear()
                self._bw_module = None
                if entered:
                    self.__exit__(None, None, None)

    def close(self) -> None:
        """Remove every hook this tracker installed (grad, optimizer, module hooks)."""
        for h in list(self._grad_hooks.values()):
            h.remove()
        self._grad_hooks = WeakIdKeyDictionary()
        for h in self._opt_hooks:
            h.remove()
        self._opt_hooks = []
        self._end_session()

    # ---- dispatch mode ------------------------------------------------------------------------
    def __enter__(self):
        if self._depth == 0:
            super().__enter__()
            self._start_session()
        self._depth += 1
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self._depth -= 1
        if self._depth == 0:
            self._end_session()
            super().__exit__(exc_type, exc_val, exc_tb)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _PRIM_DEVICE:  # most frequent op of all (autograd engine), allocates nothing
            return func(*args, **kwargs)
        for t in _iter_tensors((args, kwargs)):  # inputs created before we looked: count them from now on
            for st, dev in self._storages(t):
                if id(st) not in self._by_sid:
                    self._add(st, dev, TEMPORARIES)
        out = func(*args, **kwargs)
        new: dict[int, tuple[torch.UntypedStorage, str]] = {}
        grow: list[tuple[_Rec, int]] = []
        for t in _iter_tensors(out):
            for st, dev in self._storages(t):
                rec = self._by_sid.get(id(st))
                if rec is None:
                    new[id(st)] = (st, dev)
                elif rec.nbytes != st.nbytes():
                    grow.append((rec, st.nbytes()))
        if not new and not grow:
            return out
        self._check_budget(sum(st.nbytes() for st, _ in new.values()) + sum(n - r.nbytes for r, n in grow))
        cat = self._default_cat()
        for st, dev in new.values():
            self._add(st, dev, cat)
        for rec, n in grow:
            if cat is not TEMPORARIES and _stronger(cat, rec.cat):
                self._recat(rec, cat)
            self._resize(rec, n)
        return out

    def _default_cat(self) -> Category:
        return self._scope[-1] if self._scope else TEMPORARIES

    def _check_budget(self, want: int) -> None:
        if self.budget_bytes is not None and want > 0 and self._live + want > self.budget_bytes:
            raise TrackerOutOfMemory(self._phase_name(), want, self._live, self.budget_bytes,
                                     self._current_module())

    def _recat(self, rec: _Rec, cat: Category) -> None:
        self._cat_bytes[rec.cat] -= rec.nbytes
        self._cat_bytes[cat] += rec.nbytes
        rec.cat = cat

    # ---- bookkeeping --------------------------------------------------------------------------
    def _storages(self, t: torch.Tensor) -> list[tuple[torch.UntypedStorage, str]]:
        """(untyped storage, device type) behind a tensor on a counted device; wrapper subclasses
        flattened. The device is the tensor's: a fake tensor's storage is on meta."""
        if is_traceable_wrapper_subclass(t):
            attrs, _ = t.__tensor_flatten__()
            return [st for a in attrs if isinstance(getattr(t, a), torch.Tensor)
                    for st in self._storages(getattr(t, a))]
        dev = t.device.type
        if dev == "meta" or (self._devices is not None and dev not in self._devices):
            return []
        try:
            return [(t.untyped_storage(), dev)]
        except (RuntimeError, NotImplementedError):  # sparse, mkldnn, nested: not counted
            return []

    def _add(self, st: torch.UntypedStorage, dev: str, cat: Category) -> _Rec:
        sid = id(st)
        key = self._next_key
        self._next_key += 1
        rec = _Rec(key, st.nbytes(), cat, dev, weakref.ref(st, functools.partial(self._on_free, sid)))
        self._by_sid[sid] = rec
        self._by_key[key] = rec
        self._cat_bytes[cat] += rec.nbytes
        self._grow(key, rec.nbytes, rec.nbytes)
        return rec

    def _resize(self, rec: _Rec, nbytes: int) -> None:
        delta = nbytes - rec.nbytes
        rec.nbytes = nbytes
        self._cat_bytes[rec.cat] += delta
        self._grow(rec.key, nbytes, delta)

    def _grow(self, key: int, nbytes: int, delta: int) -> None:
        self._live += delta
        if self._live > self._peak:
            self._peak = self._live
        if self.alloc_log is not None:
            self.alloc_log.append((key, nbytes))
        if self._open:
            self._log.append((key, nbytes))
            for ph in self._open:
                if self._live > ph.peak:
                    ph.peak = self._live
                    ph.peak_idx = len(self._log)
                    ph.peak_module = self._current_module()

    def _on_free(self, sid: int, wr: weakref.ref) -> None:
        rec = self._by_sid.get(sid)
        if rec is None or rec.ref is not wr:
            return
        self._drop(sid, rec)

    def _drop(self, sid: int, rec: _Rec) -> None:
        del self._by_sid[sid]
        del self._by_key[rec.key]
        self._live -= rec.nbytes
        self._cat_bytes[rec.cat] -= rec.nbytes
        if self.alloc_log is not None:
            self.alloc_log.append((rec.key, -1))
        if self._open:
            self._log.append((rec.key, -1))
            self._graveyard[rec.key] = rec.cat

    def _narrow(self, types: set[str]) -> None:
        """Count only these device types from now on; forget storages elsewhere."""
        self._devices = set(types)
        for sid, rec in list(self._by_sid.items()):
            if rec.dev not in types:
                self._drop(sid, rec)

    def _classify(self, t: torch.Tensor, cat: Category) -> None:
        for st, dev in self._storages(t):
            rec = self._by_sid.get(id(st))
            if rec is None:
                self._add(st, dev, cat)
                continue
            if st.nbytes() != rec.nbytes:
                self._resize(rec, st.nbytes())
            if _stronger(cat, rec.cat):
                self._recat(rec, cat)

    def _on_grad(self, p: torch.Tensor) -> None:
        if p.grad is not None:
            self._classify(p.grad, GRADIENTS)

    def _on_step(self, opt: torch.optim.Optimizer, *_: Any) -> None:
        for state in opt.state.values():
            for t in _state_tensors(state):
                self._classify(t, OPTIMIZER)

    def _close_phase(self, ph: _Open) -> PhaseMemory:
        self.rescan()
        if ph.name == "forward":  # made in forward, alive at the forward->backward boundary
            for rec in self._by_key.values():
                if rec.cat is TEMPORARIES and rec.key >= ph.first_key:
                    self._cat_bytes[TEMPORARIES] -= rec.nbytes
                    self._cat_bytes[ACTIVATIONS] += rec.nbytes
                    rec.cat = ACTIVATIONS
        alive = dict(ph.start_live)
        for key, n in self._log[ph.start_idx:ph.peak_idx]:
            if n < 0:
                alive.pop(key, None)
            else:
                alive[key] = n
        at_peak = {c.value: 0 for c in TRACKER_CATEGORIES}
        for key, n in alive.items():
            rec = self._by_key.get(key)
            cat = rec.cat if rec is not None else self._graveyard.get(key, TEMPORARIES)
            at_peak[cat.value] += n
        return PhaseMemory(ph.name, ph.step, ph.peak, self._live, _public(at_peak), self.breakdown(),
                           ph.peak_module)

    # ---- module attribution -------------------------------------------------------------------
    def _start_session(self) -> None:
        mod = torch.nn.modules.module
        hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        hooks.__enter__()
        self._session = [
            mod.register_module_forward_pre_hook(self._fw_pre),
            mod.register_module_forward_hook(self._fw_post, always_call=True),
            hooks,
        ]

    def _end_session(self) -> None:
        for h in reversed(self._session):
            if isinstance(h, torch.autograd.graph.saved_tensors_hooks):
                h.__exit__(None, None, None)
            else:
                h.remove()
        self._session = []
        self._mod_stack.clear()

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        """Classify a saved tensor; keep a detached alias (same storage, so the same bytes and peaks). The
        tensor itself would hold its grad_fn, which holds the packed tensor: a cycle through C++ that gc
        cannot break, keeping graph, activations and weights alive after an abandoned forward (an OOM)."""
        self._classify(t, ACTIVATIONS)
        return t.detach()

    def _name(self, m: torch.nn.Module) -> str:
        return self._names.get(m) or type(m).__name__

    def _fw_pre(self, m: torch.nn.Module, args: Any) -> None:
        self._mod_stack.append(self._name(m))

    def _fw_post(self, m: torch.nn.Module, args: Any, out: Any) -> None:
        if self._mod_stack:
            self._mod_stack.pop()
        if torch.is_grad_enabled():  # output grad ready => this module's backward is about to run
            hook = functools.partial(self._bw_pre, self._name(m))
            for t in _iter_tensors(out):
                if t.requires_grad:
                    t.register_hook(hook)

    def _bw_pre(self, name: str, grad: torch.Tensor) -> None:
        self._bw_module = name

    def _current_module(self) -> str | None:
        if self._mod_stack:
            return self._mod_stack[-1]
        if torch._C._current_graph_task_id() != -1:
            return self._bw_module
        return None

    def _phase_name(self) -> str:
        return self._open[-1].name if self._open else ""


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t


def _public(breakdown: dict[str, int]) -> dict[str, int]:
    """comm_buffers only where there are any (one-process lines keep their five categories)."""
    if breakdown.get(COMM_BUFFERS.value) == 0:
        del breakdown[COMM_BUFFERS.value]
    return breakdown
