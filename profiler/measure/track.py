"""Profile the user's own training loop: `with track(model, optimizer) as t: ...` -> a RunRecord like `run`'s.

Phases are found without the user marking them, and are contiguous (a phase lasts until the next begins):
- **forward** opens at a forward pre-hook on the top model (a forward after an optimizer step starts a
  new step; several forward/backward pairs per step are gradient accumulation);
- **backward** opens when `torch.autograd.backward` is entered (`loss.backward()`,
  `accelerator.backward(loss)`): a hook on the model's outputs would fire only after the gradient of a
  loss computed outside the model (often the largest tensor of the step) was already allocated. The
  wrapper is installed only while tracking and calls straight through when nested (reentrant
  gradient checkpointing calls backward inside backward);
- **optimizer_step** opens at the optimizer's step pre-hook (on the wrapped `.optimizer` of accelerate's
  `AcceleratedOptimizer`, which lacks torch's hook tables), and so includes `zero_grad` after it.
The last phase ends at `stop()` / the end of the `with` block. Memory comes from the probes `run` uses,
through the same `PhaseMeter`: mode `breakdown` = the category tracker (plus allocator and NVML on
CUDA); mode `light` = allocator + NVML peaks on CUDA; on the CPU, where there is no allocator counter,
`light` records the process RSS at phase boundaries (`memory_source: rss`), not a peak.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import torch

from profiler.config import LIMITS, ConfigError, RunConfig, echo
from profiler.measure.env import collect_env
from profiler.measure.harness import OOM_ERRORS, PhaseMeter, _nvml_sampler, _peaks
from profiler.measure.model_stats import is_quantized, model_stats
from profiler.measure.probes.tracker import TensorTracker

Mode = Literal["breakdown", "light"]
MODES = ("breakdown", "light")
_OPTIMIZER_NAMES = {"AdamW": "adamw", "Adam": "adam", "SGD": "sgd", "AdamW8bit": "adamw_8bit",
                    "PagedAdamW8bit": "paged_adamw_8bit"}


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer that owns the step hooks: accelerate's AcceleratedOptimizer (and similar
    wrappers) keep it in `.optimizer` without calling torch's Optimizer.__init__."""
    if optimizer is None:
        return None
    opt = optimizer
    for _ in range(8):
        if hasattr(opt, "_optimizer_step_pre_hooks"):
            return opt
        opt = getattr(opt, "optimizer", None)
        if opt is None:
            break
    raise TypeError(f"{type(optimizer).__name__}: no torch.optim.Optimizer found in it (looked in .optimizer)")


def _checkpointing(model: torch.nn.Module) -> bool:
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    for attr in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # transformers 5 renamed it
        if hasattr(type(model), attr) or attr in vars(model):
            return bool(getattr(model, attr))
    return False


def others_baseline(reader, reserved_now: int) -> int:
    """NVML baseline for a process that already holds CUDA memory: what other processes use (device used -
    this process, where NVML shows per-process figures), else device used - what our allocator holds now
    (then this process's CUDA context counts as baseline, not as the `context` component)."""
    used, proc = reader()
    return used - proc if proc is not None else used - reserved_now


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class Tracker:
    """A tracking session (use `track(...)`). `record` holds the RunRecord dict after `stop()`."""

    def __init__(self, model: torch.nn.Module, optimizer: Any = None, *, mode: Mode = "breakdown",
                 config: RunConfig | None = None, name: str | None = None, warmup_steps: int = 1,
                 output: str | os.PathLike | None = None, summary: bool = False, source: str = "track",
                 extra_models: tuple[torch.nn.Module, ...] | list[torch.nn.Module] = ()):
        if mode not in MODES:
            raise ValueError(f"mode: {mode!r} is not a tracking mode; allowed: {', '.join(MODES)}")
        lo, hi = LIMITS["train.warmup_steps"]  # the bound a run config has
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or not lo <= warmup_steps <= hi:
            raise ConfigError(f"warmup_steps: {echo(warmup_steps)} is not allowed; allowed: a whole number "
                              f"{lo}..{hi} (the steps before the steady state)")
        if output is not None:  # checked now, before the user's loop runs: never an error after the training
            from profiler.results import check_output

            check_output(output, "output")
        self.model = model
        self.extra_models = [m for m in extra_models if m is not None]
        self.optimizer = unwrap_optimizer(optimizer)
        self.mode = mode
        self.config = config
        self.name = name
        self.warmup_steps = warmup_steps
        self.output = output
        self.summary = summary
        self.source = source
        self.device = next((p.device.type for p in model.parameters()), "cpu")
        self.cuda = self.device == "cuda"
        self.record: dict | None = None
        self.step = -1
        self.optimizer_steps = 0
        self.batch_shape: tuple[int, ...] | None = None
        self._current: str | None = None
        self._cm = None
        self._rss0 = 0
        self._bw_depth = 0
        self._orig_backward = None
        self._handles: list[Any] = []
        self._step_t0: dict[int, float] = {}
        self._step_t1: dict[int, float] = {}
        self.active = False

    # ---- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> Tracker:
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.stop(exc)
        return False  # the user's exception (an OOM too) still propagates, after the line is recorded

    def start(self) -> None:
        self.started = time.perf_counter()
        self.timestamp = datetime.now(UTC).isoformat(timespec="seconds")
        self.sampler = _nvml_sampler() if self.cuda else None
        if self.sampler is not None:
            self.sampler.__enter__()
            self.sampler.baseline = others_baseline(self.sampler.reader, torch.cuda.memory_reserved())
        self.tracker = (TensorTracker(devices={"cuda"} if self.cuda else None)
                        if self.mode == "breakdown" else None)
        self.meter = PhaseMeter(self.cuda, self.tracker, self.sampler)
        if self.tracker is not None:
            self.tracker.__enter__()
            self.tracker.attach(self.model, self.optimizer)
            for m in self.extra_models:  # e.g. DPO's reference model: its parameters are weights too
                self.tracker.attach(m)
        self._handles.append(self.model.register_forward_pre_hook(self._on_forward, with_kwargs=True))
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_pre_hook(self._on_step_pre))
            self._handles.append(self.optimizer.register_step_post_hook(self._on_step_post))
        self._orig_backward = torch.autograd.backward
        self._wrapper = self._backward  # one bound method: `is` compares it at stop
        torch.autograd.backward = self._wrapper
        self.active = True

    def stop(self, exc: BaseException | None = None) -> dict:
        """End tracking (idempotent): close the open phase, remove every hook, build the record."""
        if not self.active:
            return self.record
        self.active = False
        oom_at = (self._current, self.step) if isinstance(exc, OOM_ERRORS) else None
        try:
            self._close()
        finally:
            if torch.autograd.backward is self._wrapper:
                torch.autograd.backward = self._orig_backward
            for h in self._handles:
                h.remove()
            self._handles = []
            if self.tracker is not None:
                self.tracker.__exit__(None, None, None)
                self.tracker.close()
            if self.sampler is not None:
                self.sampler.__exit__(None, None, None)
        self.record = self._build_record(exc, oom_at)
        if self.output is not None:
            from profiler.results import append_record
            from profiler.schema import RunRecord

            RunRecord.model_validate(self.record)
            append_record(self.output, self.record)
        if self.summary:
            from profiler.summary import print_summary

            print_summary(self.record, str(self.output) if self.output else None)
        return self.record

    # ---- phase transitions --------------------------------------------------------------------
    def _open(self, phase: str) -> None:
        self._close()
        if phase == "forward" and self._current_or_last in (None, "optimizer_step"):
            self.step += 1
            self._step_t0[self.step] = time.perf_counter()
        step = max(self.step, 0)
        self._rss0 = _rss_bytes() if self._light_cpu else 0
        self._cm = self.meter.phase(phase, step, warmup=step < self.warmup_steps)
        self._cm.__enter__()
        self._current = self._last = phase

    def _close(self) -> None:
        if self._cm is None:
            return
        cm, self._cm, self._current = self._cm, None, None
        cm.__exit__(None, None, None)
        rec = self.meter.records[-1]
        self._step_t1[rec["step"]] = time.perf_counter()
        if self._light_cpu:
            rss = _rss_bytes()
            rec.update(allocated_bytes=rss, peak_allocated_bytes=max(rss, self._rss0))

    @property
    def _light_cpu(self) -> bool:
        return self.tracker is None and not self.cuda

    @property
    def _current_or_last(self) -> str | None:
        return getattr(self, "_last", None)

    # ---- hooks --------------------------------------------------------------------------------
    def _on_forward(self, module, args, kwargs) -> None:
        if not self.active or self._bw_depth or self._current == "forward":
            return  # recomputation inside backward (checkpointing) or a second call in the same forward
        if self.batch_shape is None:
            ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
            if isinstance(ids, torch.Tensor):
                self.batch_shape = tuple(ids.shape)
        self._open("forward")

    def _backward(self, *args, **kwargs):
        if self.active and self._bw_depth == 0 and self._current != "backward":
            self._open("backward")
        self._bw_depth += 1
        try:
            return self._orig_backward(*args, **kwargs)
        finally:
            self._bw_depth -= 1

    def _on_step_pre(self, optimizer, args, kwargs) -> None:
        if self.active:
            self._open("optimizer_step")

    def _on_step_post(self, optimizer, args, kwargs) -> None:
        self.optimizer_steps += 1

    # ---- the record ---------------------------------------------------------------------------
    def _config(self) -> tuple[dict, str]:
        if self.config is not None:
            return self.config.model_dump(mode="json"), self.config.config_hash()
        m = self.model
        params = list(m.parameters())
        trainable = [p for p in params if p.requires_grad]
        quant = [p for p in params if is_quantized(p)]
        if not trainable:
            regime: dict = {"kind": "inference"}
        elif quant:
            regime = {"kind": "qlora", "bits": 8 if any(p.dtype == torch.int8 for p in quant) else 4}
        elif hasattr(m, "peft_config"):
            regime = {"kind": "lora"}
        else:
            regime = {"kind": "full" if len(trainable) == len(params) else "freeze"}
        dtype = next((p.dtype for p in params if p.is_floating_point()), torch.float32)
        opt_name = type(self.optimizer).__name__ if self.optimizer is not None else None
        b, s = (self.batch_shape + (None, None))[:2] if self.batch_shape else (None, None)
        cfg = {
            "model": {"arch": self._model_name(), "dtype": str(dtype).removeprefix("torch.")},
            "regime": regime,
            "optimizer": {"name": _OPTIMIZER_NAMES.get(opt_name, opt_name)},
            "train": {"batch_size": b, "seq_len": s, "steps": self.step + 1, "warmup_steps": self.warmup_steps,
                      "gradient_checkpointing": _checkpointing(m)},
            "device": self.device,
        }
        return cfg, hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]

    def _model_name(self) -> str:
        if self.name:
            return self.name
        if self.config is not None:
            return self.config.model.name
        hf = getattr(self.model, "config", None)
        name = getattr(hf, "name_or_path", None)
        if name and (name.endswith(".json") or os.path.isdir(name)):  # a local path: tiny-llama.json -> tiny-llama
            base = os.path.basename(os.path.normpath(name))
            name = os.path.basename(os.path.dirname(name)) if base == "config.json" else base.removesuffix(".json")
        return name or getattr(hf, "model_type", None) or type(self.model).__name__

    def _build_record(self, exc: BaseException | None, oom_at) -> dict:
        cfg, cfg_hash = self._config()
        record: dict = {
            "run_id": uuid.uuid4().hex,
            "timestamp": self.timestamp,
            "config_hash": cfg_hash,
            "config": cfg,
            "backend": "cuda" if self.cuda else "cpu",
            "source": self.source,
            "tracking_mode": self.mode,
            "status": "ok",
            "error": None,
            "env": collect_env(self.device),
            "model": model_stats(self.model, self._model_name()),
            "phases": self.meter.records,
            "attention_kernel": getattr(getattr(self.model, "config", None), "_attn_implementation", None),
        }
        if self._light_cpu:
            record["memory_source"] = "rss"  # process RSS at phase boundaries, not a peak: no CPU allocator
        if oom_at is not None:
            record.update(status="oom", error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                          oom_phase=oom_at[0], oom_step=oom_at[1])
        elif exc is not None:
            record.update(status="error", error=f"{type(exc).__name__}: {exc}")
        steps = sorted({r["step"] for r in self.meter.records})
        last = steps[-1] if steps and record["status"] == "ok" else None
        record["peaks"] = _peaks(self.meter.records, last)
        durations = [self._step_t1[s] - self._step_t0[s] for s in steps
                     if s >= self.warmup_steps and s in self._step_t0 and s in self._step_t1]
        median = statistics.median(durations) if durations else None
        tokens = self.batch_shape[0] * self.batch_shape[1] if self.batch_shape and len(self.batch_shape) > 1 else None
        record["timings"] = {"load_s": 0.0,  # the model was loaded before tracking began
                             "median_step_s": median,
                             "tokens_per_s": tokens / median if median and tokens else None}
        if self.sampler is not None:
            res = self.sampler.result()
            record["nvml"] = vars(res)
            record["peaks"]["nvml_peak_bytes"] = res.peak_used_bytes
        if self.cuda:
            from profiler.measure.probes.cuda import memory_stats

            record["memory_stats"] = memory_stats()
        return record


def track(model: torch.nn.Module, optimizer: Any = None, *, mode: Mode = "breakdown",
          config: RunConfig | None = None, name: str | None = None, warmup_steps: int = 1,
          output: str | os.PathLike | None = None, summary: bool = False,
          extra_models: tuple[torch.nn.Module, ...] | list[torch.nn.Module] = ()) -> Tracker:
    """Profile a training loop you wrote: `with track(model, optimizer) as t: ...`; `t.record` after.

    `optimizer`: a torch optimizer, a bitsandbytes one, or accelerate's AcceleratedOptimizer (unwrapped).
    `mode`: breakdown (tracker categories; slower) or light (allocator + NVML on CUDA; RSS on CPU).
    `config`: the RunConfig this loop corresponds to (else model, regime, optimizer, batch and seq are
    inferred). `output`: append the line to this JSONL file. `summary`: print the table at exit.
    `extra_models`: other models the loop runs (a DPO reference model, a teacher): their parameters count as
    weights, not temporaries; phases still follow `model`.
    """
    return Tracker(model, optimizer, mode=mode, config=config, name=name, warmup_steps=warmup_steps,
                   output=output, summary=summary, extra_models=extra_models)
