"""The measured run: load, then warm-up and measured steps of forward / backward / optimizer_step.

Every phase is wrapped by the same meter on every backend: on CUDA it reads the caching allocator's
peaks (reset at each phase start) and, when enabled, the tensor tracker's category breakdown; on CPU
(and under fake tensors) the tracker is the memory source. An OOM is a result, never a crash.
"""

from __future__ import annotations

import gc
import statistics
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Protocol

import torch

from profiler.allocator.conf import AllocatorConf, conf_from
from profiler.config import DEFAULT_CPU_BUDGET_FRACTION, ConfigError, RunConfig, default_cpu_budget, parse_bytes
from profiler.measure.act_offload import offload_context
from profiler.measure.batch import make_batch
from profiler.measure.env import collect_env
from profiler.measure.liger_flce import add_liger_loss
from profiler.measure.loading import LoadedModel, load_model, prepare_source, resolve_hf_config
from profiler.measure.losses import add_chunked_loss, forward_loss
from profiler.measure.model_stats import model_stats
from profiler.measure.optimizers import make_optimizer
from profiler.measure.parallel import comm_probe, optimizer_for, unwrap, wrap
from profiler.measure.probes.cuda import CudaProbe, free_bytes, memory_stats
from profiler.measure.probes.nvml import NvmlSampler, pynvml_reader
from profiler.measure.probes.tracker import TensorTracker, TrackerOutOfMemory
from profiler.measure.regimes import apply_regime, moe_warnings, trainable_parameters


class FakeBackend(Protocol):
    """What profiler.simulate.backend supplies to run the harness on fake tensors."""

    def mode(self) -> AbstractContextManager: ...  # e.g. a FakeTensorMode, entered around the whole run

    def load_model(self, cfg: RunConfig) -> LoadedModel: ...  # build the model under that mode

    def attention_kernel(self, cfg: RunConfig, loaded: LoadedModel) -> str: ...  # the kernel a CUDA run picks


class PhaseRecorder(Protocol):
    """An optional per-phase observer (e.g. profiler.timing.flops.WorkRecorder: FLOPs and bytes per phase):
    `phase` is entered inside the memory probes; `take()` returns what it saw there, kept in the phase record
    under `key`. Absent (None), the run does nothing more than it did without it."""

    key: str

    def phase(self, name: str, step: int | None, warmup: bool) -> AbstractContextManager: ...

    def take(self) -> dict | None: ...


OOM_ERRORS: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError, TrackerOutOfMemory)


class PhaseMeter:
    """One context manager per phase; appends a PhaseRecord dict (also when the phase raised)."""

    def __init__(self, cuda: bool, tracker: TensorTracker | None, nvml: NvmlSampler | None = None,
                 recorder: PhaseRecorder | None = None):
        self.cuda = CudaProbe() if cuda else None
        self.tracker = tracker
        self.nvml = nvml
        self.recorder = recorder
        self.records: list[dict] = []
        self.current: tuple[str, int | None] | None = None

    @contextmanager
    def phase(self, name: str, step: int | None = None, warmup: bool = False) -> Iterator[None]:
        self.current = (name, step)
        rec: dict = {"phase": name, "step": step, "warmup": warmup}
        t0 = time.perf_counter()
        if self.nvml is not None:
            self.nvml.reset_window()
        cuda_rec = None  # stays None when the CUDA probe fails to start: its own error propagates
        tracker_phases = len(self.tracker.phases) if self.tracker is not None else 0
        started = False  # the probes are in place: the phase is measured (track's light CPU mode has none)
        try:
            with ExitStack() as stack:
                cuda_rec = stack.enter_context(self.cuda.phase()) if self.cuda else None
                if self.tracker is not None:
                    stack.enter_context(self.tracker.phase(name, step))
                if self.recorder is not None:
                    stack.enter_context(self.recorder.phase(name, step, warmup))
                started = True
                yield
        finally:
            rec["seconds"] = time.perf_counter() - t0
            tr = (self.tracker.phases[-1] if self.tracker is not None and len(self.tracker.phases) > tracker_phases
                  else None)  # this phase's tracker record only, never the previous phase's
            if cuda_rec is not None:
                rec.update(allocated_bytes=cuda_rec.allocated_bytes, peak_allocated_bytes=cuda_rec.peak_allocated_bytes,
                           reserved_bytes=cuda_rec.reserved_bytes, peak_reserved_bytes=cuda_rec.peak_reserved_bytes)
            elif tr is not None:
                rec.update(allocated_bytes=tr.end_bytes, peak_allocated_bytes=tr.peak_bytes)
            if tr is not None:
                rec.update(breakdown=dict(tr.breakdown), module_at_peak=tr.module_at_peak)
            if self.nvml is not None:
                rec["nvml_peak_bytes"] = self.nvml.read_window()
            if self.recorder is not None and (seen := self.recorder.take()) is not None:
                rec[self.recorder.key] = seen
            if cuda_rec is not None and tr is not None:
                rec["breakdown"].update(cuda_components(rec, tr.peak_bytes, self.nvml))
            if started or "peak_allocated_bytes" in rec:  # a phase whose probes failed to start: no record
                self.records.append(rec)


class PagedStateTooLarge(RuntimeError):
    """Refusal: paged (CUDA managed) optimizer state larger than free GPU memory can hang the GPU."""


def paged_state_bytes(params: list[torch.Tensor]) -> int:
    """bitsandbytes 8-bit paged AdamW: two uint8 states per element (+ fp32 absmax per 256-block); tensors
    under 4096 elements keep two fp32 states."""
    total = 0
    for p in params:
        n = p.numel()
        total += 2 * n + 2 * 4 * -(-n // 256) if n >= 4096 else 8 * n
    return total


def check_paged_state_fits(params: list[torch.Tensor], free: int, margin: float = 0.9) -> None:
    need = paged_state_bytes(params)
    if need > margin * free:
        raise PagedStateTooLarge(f"refused: paged optimizer state of {need:,} bytes does not fit in "
                                 f"{margin:.0%} of the {free:,} free GPU bytes (managed memory could hang the GPU)")


def _import_libraries(cfg: RunConfig) -> None:
    """Import peft / bitsandbytes before the measured phases. Their first import is slow, may touch CUDA,
    and bitsandbytes keeps the traceback of an optional kernel it failed to import, which would pin the
    frames (and the model) of whatever first imported it."""
    if cfg.regime.kind in ("lora", "qlora"):
        import peft  # noqa: F401
    if cfg.regime.kind == "qlora" or cfg.optimizer.name.endswith("8bit"):
        import bitsandbytes  # noqa: F401


def _nvml_sampler() -> NvmlSampler | None:
    """The NVML sampler, or None where NVML cannot be read (the record then has no nvml figures)."""
    try:
        return NvmlSampler(pynvml_reader())
    except Exception as exc:  # missing library, no permission, driver mismatch
        warnings.warn(f"NVML unavailable, no nvml_peak will be recorded: {exc}", stacklevel=2)
        return None


def cuda_components(rec: dict, tracker_peak: int, nvml: NvmlSampler | None) -> dict[str, int]:
    """What the tracker cannot see, so the components add up to the NVML peak of the phase:
    untracked = peak_allocated - tracker peak (cuBLAS workspaces, 512-byte rounding, non-dispatch allocs),
    allocator = peak_reserved - peak_allocated (caching-allocator slack),
    context = NVML peak - baseline - peak_reserved (CUDA context, managed/paged memory); the baseline is the
    device use before this process initialised CUDA, also for later runs in the process (NvmlSampler.start)."""
    out = {
        "untracked": rec["peak_allocated_bytes"] - tracker_peak,
        "allocator": rec["peak_reserved_bytes"] - rec["peak_allocated_bytes"],
    }
    if nvml is not None and nvml.error is None and rec.get("nvml_peak_bytes"):
        out["context"] = rec["nvml_peak_bytes"] - nvml.baseline - rec["peak_reserved_bytes"]
    return out


def nvml_fields(sampler: NvmlSampler) -> dict:
    """`nvml` for the record; when a read on the measured thread failed, None and an `nvml_note` saying why
    (the run itself stands: NVML is a second opinion on the allocator's figures)."""
    res = sampler.result()
    if res is None:
        return {"nvml": None, "nvml_note": sampler.error}
    return {"nvml": vars(res)}


def _autocast(cfg: RunConfig):
    if cfg.train.autocast == "none":
        return nullcontext()
    dtype = torch.bfloat16 if cfg.train.autocast == "bf16" else torch.float16
    return torch.autocast(device_type=cfg.device, dtype=dtype)


def _check_sequence(cfg: RunConfig, hf_config) -> None:
    """Models with learned position tables (GPT-2) cannot take longer sequences than they have rows."""
    limit = getattr(hf_config, "n_positions", None)
    need = cfg.train.seq_len + (cfg.regime.new_tokens if cfg.regime.kind == "inference" else 0)
    if limit is not None and need > limit:
        raise ConfigError(f"train.seq_len: {need} tokens exceed this model's {limit} positions; allowed: 1..{limit}")


def _peaks(phases: list[dict], last_step: int | None) -> dict:
    def top(key: str, pred: Callable[[dict], bool] = lambda r: True) -> int | None:
        vals = [r[key] for r in phases if r.get(key) is not None and pred(r)]
        return max(vals) if vals else None

    steady = (lambda r: r["step"] == last_step) if last_step is not None else (lambda r: False)
    return {
        "peak_allocated_bytes": top("peak_allocated_bytes") or 0,
        "peak_reserved_bytes": top("peak_reserved_bytes"),
        "first_step_peak_allocated_bytes": top("peak_allocated_bytes", lambda r: r["step"] == 0),
        "steady_peak_allocated_bytes": top("peak_allocated_bytes", steady),  # None for a failed run
        "steady_peak_reserved_bytes": top("peak_reserved_bytes", steady),
    }


def run(cfg: RunConfig, *, use_tracker: bool = True, snapshot_path: str | None = None,
        on_step: Callable[[int, int], None] | None = None, fake: FakeBackend | None = None,
        prime_optimizer: bool = False, replay_allocator: bool | None = None,
        recorder: PhaseRecorder | None = None) -> dict:
    """Run one config and return its RunRecord dict. ConfigError propagates (nothing is recorded);
    an OOM gives status 'oom', any other failure status 'error'. With `fake`, the same loop runs on fake
    tensors (profiler.simulate.backend): no device memory, the tracker is the only probe.
    `prime_optimizer` (fake only, see `primable`): the warm-up steps are replaced by one optimizer step on
    zero gradients, which creates the optimizer state as the first step would; only the last step runs.
    `replay_allocator` (default: on CUDA): record the tracker's allocation sequence and replay it through the
    caching allocator (profiler.measure.reserved): predicted_reserved_bytes / predicted_nvml_bytes.
    `recorder` (optional, see PhaseRecorder): observes each phase; its findings go into the phase records."""
    cuda = cfg.device == "cuda" and fake is None
    replaying, alloc_conf, alloc_note = _allocator_settings(cfg, cuda, use_tracker, replay_allocator)
    _check_device(cfg, cuda)
    use_tracker = True if not cuda else bool(use_tracker)  # off CUDA the tracker is the only memory probe
    torch.manual_seed(cfg.seed)
    record = _new_record(cfg, fake, cuda, alloc_note)
    resolve_hf_config(cfg.model)  # a broken or non-causal config.json: ConfigError (exit 2), nothing run
    prepare_error = _prepare(cfg) if fake is None else None
    sampler = _start_cuda_probes(cfg, snapshot_path) if cuda else None
    _import_libraries(cfg)
    record["env"] = collect_env("cpu" if fake else cfg.device)
    tracker, default_budget = _new_tracker(cfg, cuda, fake is not None, use_tracker, replaying)
    meter = PhaseMeter(cuda, tracker, sampler, recorder)
    live, load_s, step_seconds = _Live(), 0.0, []
    steps_total = cfg.train.warmup_steps + cfg.train.steps
    primed = prime_optimizer and fake is not None and primable(cfg)
    try:
        with ExitStack() as modes:
            _enter_modes(modes, cfg, fake, tracker, prepare_error)
            load_s = _load(live, cfg, fake, cuda, tracker, meter)
            _describe_model(record, live, cfg, fake)
            _steps(live, cfg, meter, record, step_seconds, on_step, primed, fake is not None)
    except OOM_ERRORS as exc:
        _record_oom(record, exc, meter, default_budget, cuda)
    except ConfigError:
        raise
    except Exception as exc:  # recorded, never lost: the line says what broke
        _record_error(record, exc)
    finally:
        live.drop()  # drop every reference to device memory
        _release(tracker, sampler)
    _finish_record(record, meter.records, steps_total, _timings(cfg, load_s, step_seconds, fake is not None))
    _record_replay(record, tracker, alloc_conf, cuda)
    _record_device(record, sampler, cuda, snapshot_path)
    return record


def _allocator_settings(cfg: RunConfig, cuda: bool, use_tracker: bool,
                        replay_allocator: bool | None) -> tuple[bool, AllocatorConf | None, str | None]:
    """Whether the allocator replay runs, with which settings, and a note when the environment's settings
    rule it out: a bad `allocator.conf` key is a ConfigError (exit 2, nothing run), a bad environment is not."""
    replaying = (cuda if replay_allocator is None else replay_allocator) and use_tracker
    alloc_conf, alloc_note = None, None
    if cfg.allocator.conf:
        alloc_conf = conf_from(cfg.allocator.conf)  # a bad config key: ConfigError (exit 2), nothing run
    elif replaying:
        try:
            alloc_conf = conf_from(None)
        except ConfigError as exc:  # the environment's settings: the run goes on, without the replay
            replaying = False
            alloc_note = f"no allocator replay (predicted_reserved_bytes): {exc} (from the environment)"
    return replaying, alloc_conf, alloc_note


def _check_device(cfg: RunConfig, cuda: bool) -> None:
    """Refuse, before anything runs, a device this machine lacks or a budget that backend cannot enforce."""
    if cuda and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' is not available on this machine; allowed here: cpu")
    if cfg.max_memory is not None and cuda:
        raise ConfigError("max_memory: the tracker budget applies to device cpu only; remove it for cuda")


def _new_record(cfg: RunConfig, fake: FakeBackend | None, cuda: bool, alloc_note: str | None) -> dict:
    """The RunRecord's head, status 'ok' until the run says otherwise; the later steps add the rest."""
    return {
        "run_id": uuid.uuid4().hex,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "config_hash": cfg.config_hash(),
        "config": cfg.model_dump(mode="json"),
        "backend": "fake" if fake else ("cuda" if cuda else "cpu"),
        "status": "ok",
        "error": None,
        "warnings": moe_warnings(cfg) + ([alloc_note] if alloc_note else []),
    }


def _prepare(cfg: RunConfig) -> Exception | None:
    """Prepare a real run's model source; a failure other than ConfigError (e.g. a full disk while writing the
    checkpoint) is returned, to be raised inside the run and recorded as its error."""
    try:
        prepare_source(cfg)
    except ConfigError:
        raise
    except Exception as exc:
        return exc
    return None


def _start_cuda_probes(cfg: RunConfig, snapshot_path: str | None) -> NvmlSampler | None:
    """Start NVML before CUDA's context exists (its baseline), then CUDA itself with the allocator settings the
    replay models, and the memory history when a snapshot is asked for; returns the sampler (None: no NVML)."""
    sampler = _nvml_sampler()
    if sampler is not None:  # baseline before this process creates its CUDA context (or the first one's)
        sampler.start(cuda_initialised=torch.cuda.is_initialized())
    torch.cuda.init()
    if cfg.allocator.conf and hasattr(torch._C, "_accelerator_setAllocatorSettings"):
        torch._C._accelerator_setAllocatorSettings(cfg.allocator.conf)  # the run uses what the replay models
    if snapshot_path:
        torch.cuda.memory._record_memory_history(max_entries=200_000)
    return sampler


def _new_tracker(cfg: RunConfig, cuda: bool, fake: bool, use_tracker: bool,
                 replaying: bool) -> tuple[TensorTracker | None, bool]:
    """The tensor tracker (None when off) with its budget, logging allocations when the replay runs; and
    whether that budget is the default one (a real CPU run never swaps the machine), for the OOM line."""
    budget = parse_bytes(str(cfg.max_memory)) if cfg.max_memory else None
    default_budget = budget is None and not cuda and not fake
    if default_budget:
        budget = default_cpu_budget()
    tracker = TensorTracker(budget_bytes=budget, devices={"cuda"} if cuda else None) if use_tracker else None
    if tracker is not None and replaying:
        tracker.alloc_log = []
    return tracker, default_budget


class _Live:
    """The run's model, optimizer and batch in one place, so that run()'s `finally` drops every reference to
    them (device memory); created per run() call and never kept beyond it. _load writes here, not into
    locals, so that a traceback of an error in the load phase pins nothing."""

    __slots__ = ("loaded", "model", "optimizer", "batch", "offload")

    def __init__(self) -> None:
        self.drop()

    def drop(self) -> None:
        self.loaded = self.model = self.optimizer = self.batch = self.offload = None


def _enter_modes(modes: ExitStack, cfg: RunConfig, fake: FakeBackend | None, tracker: TensorTracker | None,
                 prepare_error: Exception | None) -> None:
    """Enter, before load, the fake mode and the tracker (so a preparation error is raised inside them and
    recorded), then the data-parallel communication probe (what its engine adds)."""
    if fake is not None:
        modes.enter_context(fake.mode())
    if tracker is not None:
        modes.enter_context(tracker)
    if prepare_error is not None:
        raise prepare_error
    modes.enter_context(comm_probe(cfg, tracker))  # data parallelism: what its engine adds


def _load(live: _Live, cfg: RunConfig, fake: FakeBackend | None, cuda: bool, tracker: TensorTracker | None,
          meter: PhaseMeter) -> float:
    """The measured load phase: model, regime, chunked loss, parallel wrap, optimizer and batch, into `live`;
    returns its seconds."""
    training = cfg.regime.kind != "inference"
    t0 = time.perf_counter()
    with meter.phase("load"):
        live.loaded = fake.load_model(cfg) if fake is not None else load_model(cfg)
        _check_sequence(cfg, live.loaded.hf_config)
        live.model = apply_regime(live.loaded.model, cfg)
        if training and cfg.train.loss == "chunked":  # TRL's fused LM head, patched as SFTTrainer does
            add_chunked_loss(live.model)
        if training and cfg.train.loss == "liger":  # Liger's lce_forward: no logits in training
            add_liger_loss(live.model)
        live.model = wrap(live.model, cfg, tracker)  # parallel.strategy
        if tracker is not None:
            tracker.attach(live.model)
        if training:
            if cuda and cfg.optimizer.name.startswith("paged"):
                check_paged_state_fits(trainable_parameters(live.model), free_bytes() or 0)
            live.optimizer = (optimizer_for(live.model)
                              or make_optimizer(cfg.optimizer, trainable_parameters(live.model)))
            if tracker is not None:
                tracker.attach(live.model, live.optimizer)
        vocab = live.loaded.hf_config.get_text_config().vocab_size
        live.batch = make_batch(cfg, vocab)  # train.packing: as the stack's collator builds it
        # train.activation_offloading: built once, as SFTTrainer.__init__ does (profiler/measure/act_offload.py)
        live.offload = offload_context(live.model, training and cfg.train.activation_offloading, fake is not None)
    return time.perf_counter() - t0


def _describe_model(record: dict, live: _Live, cfg: RunConfig, fake: FakeBackend | None) -> None:
    """The loaded model's sizes and the attention kernel the run uses, into the record."""
    record["model"] = model_stats(unwrap(live.model), cfg.model.name)
    record["attention_kernel"] = (fake.attention_kernel(cfg, live.loaded) if fake is not None
                                  else getattr(live.loaded.hf_config, "_attn_implementation", None))


def _steps(live: _Live, cfg: RunConfig, meter: PhaseMeter, record: dict, step_seconds: list[float],
           on_step: Callable[[int, int], None] | None, primed: bool, fake: bool) -> None:
    """The warm-up and measured steps (after the priming step when `primed`); each measured step's seconds
    go into `step_seconds` as it ends, so a run that fails later keeps them."""
    steps_total = cfg.train.warmup_steps + cfg.train.steps
    training = cfg.regime.kind != "inference"
    first = 0
    if primed:
        with meter.phase("optimizer_step", 0, True):
            _prime(live.model, live.optimizer, meter.tracker)
        first = steps_total - 1
        record["primed_optimizer"] = True
    for step in range(first, steps_total):
        warm = step < cfg.train.warmup_steps
        t_step = time.perf_counter()
        if training:
            _train_step(live.model, live.optimizer, live.batch, cfg, meter, step, warm, fake, live.offload)
        else:
            _inference_step(live.model, live.batch["input_ids"], cfg, meter, step, warm)
        if not warm:
            step_seconds.append(time.perf_counter() - t_step)
        if on_step:
            on_step(step + 1, steps_total)
    host_peak = getattr(live.offload, "host_peak", None)  # MirrorOffload (simulated): the host copies' bytes
    if host_peak is not None:
        record["activation_offload"] = {"host_peak_bytes": host_peak, "source": "simulated (MirrorOffload of "
                                        "trl 1.16 OffloadActivations): host memory, not counted on the GPU"}


def _record_oom(record: dict, exc: BaseException, meter: PhaseMeter, default_budget: bool, cuda: bool) -> None:
    """An OOM is a result: status 'oom', its first line, the phase and step it hit, the free bytes then; its
    traceback is dropped so its frames pin no tensor."""
    record.update(status="oom", error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if default_budget and isinstance(exc, TrackerOutOfMemory):
        record["error"] += (f" (default CPU budget: {DEFAULT_CPU_BUDGET_FRACTION:.0%} of the RAM available "
                            "at start; set max_memory to change it)")
    if meter.current:
        record["oom_phase"], record["oom_step"] = meter.current
    record["free_bytes_at_oom"] = free_bytes() if cuda else None
    exc.__traceback__ = None


def _record_error(record: dict, exc: Exception) -> None:
    """Any other failure is recorded, never lost: status 'error' and a line saying what broke; its traceback is
    dropped so its frames pin no tensor."""
    record.update(status="error", error=f"{type(exc).__name__}: {exc}")
    exc.__traceback__ = None


def _release(tracker: TensorTracker | None, sampler: NvmlSampler | None) -> None:
    """After the run's references are dropped: close the tracker (its grad/optimizer hooks would otherwise keep
    the model alive), stop the NVML sampler, and collect, so device memory is freed before the record ends."""
    if tracker is not None:
        tracker.close()
    if sampler is not None:
        sampler.__exit__(None, None, None)
    gc.collect()


def _timings(cfg: RunConfig, load_s: float, step_seconds: list[float], fake: bool) -> dict:
    """Load seconds, the median measured step and its tokens per second (none for a fake step: it means nothing)."""
    return {
        "load_s": load_s,
        "median_step_s": statistics.median(step_seconds) if step_seconds else None,
        "tokens_per_s": (cfg.train.batch_size * cfg.train.seq_len / statistics.median(step_seconds)
                         if step_seconds and not fake else None),  # a fake step's speed means nothing
    }


def _finish_record(record: dict, phases: list[dict], steps_total: int, timings: dict) -> None:
    """The phase records, their peaks (steady: the last step's, only for a run that finished) and timings."""
    record["phases"] = phases
    last = steps_total - 1 if record["status"] == "ok" else None
    record["peaks"] = _peaks(phases, last)
    record["timings"] = timings


def _record_replay(record: dict, tracker: TensorTracker | None, alloc_conf: AllocatorConf | None,
                   cuda: bool) -> None:
    """The allocator replay of a finished run's allocation log: predicted_reserved_bytes / predicted_nvml_bytes."""
    if tracker is not None and tracker.alloc_log is not None and record["status"] == "ok":
        from profiler.measure.reserved import add_predictions

        gpu = _gpu_facts() if cuda else {}
        add_predictions(record, tracker, alloc_conf, **gpu)
        tracker.alloc_log = None


def _record_device(record: dict, sampler: NvmlSampler | None, cuda: bool, snapshot_path: str | None) -> None:
    """NVML's figures, the allocator's memory_stats and the snapshot; then an empty cache, so the next run in
    this process starts from nothing."""
    if sampler is not None:
        record.update(nvml_fields(sampler))
        record["peaks"]["nvml_peak_bytes"] = record["nvml"]["peak_used_bytes"] if record["nvml"] else None
    if cuda:
        record["memory_stats"] = memory_stats()
        if snapshot_path:
            torch.cuda.memory._dump_snapshot(snapshot_path)
            torch.cuda.memory._record_memory_history(enabled=None)
        torch.cuda.empty_cache()  # the next run in this process starts from an empty cache


def _gpu_facts() -> dict:
    """The GPU's architecture ("sm90"), CUDA version and total memory, for the allocator replay."""
    major, minor = torch.cuda.get_device_capability()
    return {"arch": f"sm{major}{minor}", "cuda": torch.version.cuda,
            "device_total": torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory}


def primable(cfg: RunConfig) -> bool:
    """Where a fake run may replace its warm-up steps by an optimizer step on zero gradients with the same
    peak (tests/test_simulate.py checks it config by config): a training run on one device with a warm-up,
    whose steps after the first are the first plus the optimizer state. Data-parallel wrappers are not:
    DDP rebuilds its buckets after the first step, FSDP2 initialises lazily in the first forward."""
    return (cfg.regime.kind != "inference" and cfg.train.warmup_steps >= 1 and cfg.parallel.strategy == "none")


def _prime(model, optimizer, tracker: TensorTracker | None) -> None:
    """The warm-up step's optimizer phase without its forward and backward: every trainable parameter gets a
    zero gradient of its own shape and dtype (what backward leaves), then step and zero_grad as in _train_step.
    The state tensors the step creates are the first step's; the forward and backward of the steps after it
    are the first step's plus that state, so the measured step that follows carries every peak."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
    if tracker is not None:  # the zero gradients are gradients in the breakdown, as backward's would be
        tracker.rescan()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _train_step(model, optimizer, batch, cfg: RunConfig, meter: PhaseMeter, step: int, warm: bool,
                fake: bool = False, offload=None) -> None:
    """One optimizer step. With train.grad_accum_steps K > 1 the first K-1 micro-batches (forward + backward into
    the gradients the last one adds to) run in phase `accumulate`; a fake run does one of them, since every
    micro-batch after the first starts from the same state. train.max_grad_norm > 0 clips the gradients in the
    optimizer phase, before the step, as Trainer does (transformers/trainer.py:1930; torch clip_grad_norm_).
    `offload` (train.activation_offloading) is entered around each micro-batch's forward + backward, as
    SFTTrainer.training_step does (trl/trainer/sft_trainer.py:1690-1693)."""
    offload = offload if offload is not None else nullcontext()
    backward = getattr(optimizer, "backward", None) or torch.Tensor.backward  # DeepSpeed's engine: engine.backward
    k = cfg.train.grad_accum_steps
    early = min(k - 1, 1) if fake else k - 1
    if early:
        with meter.phase("accumulate", step, warm):
            for _ in range(early):
                with offload:
                    loss = forward_loss(model, batch, cfg, _autocast(cfg))
                    backward(loss / k)
                    del loss
    with offload:
        with meter.phase("forward", step, warm):
            loss = forward_loss(model, batch, cfg, _autocast(cfg))  # outputs (logits) dropped as HF Trainer does
            if k > 1:
                loss = loss / k
        with meter.phase("backward", step, warm):
            backward(loss)
            del loss
    with meter.phase("optimizer_step", step, warm):
        if cfg.train.max_grad_norm > 0 and not cfg.parallel.strategy.startswith("zero"):  # DeepSpeed clips itself
            torch.nn.utils.clip_grad_norm_(trainable_parameters(model), cfg.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _inference_step(model, batch, cfg: RunConfig, meter: PhaseMeter, step: int, warm: bool) -> None:
    with torch.no_grad(), _autocast(cfg):
        with meter.phase("forward", step, warm):
            out = model(input_ids=batch)
            del out
        if cfg.regime.new_tokens:
            with meter.phase("generate", step, warm):
                n = cfg.regime.new_tokens
                model.generate(input_ids=batch, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               pad_token_id=0)
