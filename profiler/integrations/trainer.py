"""`MemoryProfilerCallback`: profile the first steps of a `transformers.Trainer` (or TRL trainer) run.

It starts `profiler.measure.track` at `on_train_begin` on the Trainer's model and optimizer (accelerate's
wrapper is unwrapped), stops after `steps` optimizer steps (`on_step_end`, after `zero_grad`), then writes
the result line (`source: track`), a timeline picture, and logs the key figures. Usage:

    trainer.add_callback(MemoryProfilerCallback(steps=3))   # or profile_trainer(trainer, steps=3)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from profiler.config import RunConfig
from profiler.measure.track import MODES, Mode, Tracker

logger = logging.getLogger("llm_memprof")
MiB = 2**20


class MemoryProfilerCallback(TrainerCallback):
    """Profile the first `steps` optimizer steps (None: every step; sensible with mode `light` only).

    `mode`: breakdown (categories at each phase peak; the tracker slows each step, so a few steps) or
    light (allocator + NVML peaks on CUDA; on CPU only the process RSS at phase boundaries).
    `output`: JSONL file (default `<output_dir>/memprof.jsonl`); `picture`: PNG (default
    `<output_dir>/memprof-timeline.png`; False for none). `config`: the RunConfig this training matches,
    recorded instead of the inferred one. `summary`: print the table when profiling stops.
    """

    def __init__(self, steps: int | None = 3, mode: Mode = "breakdown", output: str | Path | None = None,
                 picture: str | Path | bool | None = None, config: RunConfig | None = None,
                 warmup_steps: int = 1, summary: bool = True, trainer: Any = None):
        if mode not in MODES:
            raise ValueError(f"mode: {mode!r} is not a tracking mode; allowed: {', '.join(MODES)}")
        if steps is not None and steps < 1:
            raise ValueError(f"steps: {steps!r} must be at least 1 (or None for every step)")
        if output is not None:  # checked now, before the training (the default one at on_train_begin)
            from profiler.results import check_output

            check_output(output, "output")
        self.steps, self.mode, self.output, self.picture = steps, mode, output, picture
        self.config, self.warmup_steps, self.summary, self.trainer = config, warmup_steps, summary, trainer
        self.tracker: Tracker | None = None
        self.record: dict | None = None
        self.figures: dict[str, float] = {}
        self._first_step = 0

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.record is not None or self.tracker is not None:
            return  # one profile per callback (a second train() call is not profiled again)
        out_dir = Path(args.output_dir)
        if self.output is None:
            self.output = out_dir / "memprof.jsonl"
        if self.picture is None or self.picture is True:
            self.picture = out_dir / "memprof-timeline.png"
        self._first_step = state.global_step
        ref = getattr(self.trainer, "ref_model", None)  # TRL DPO/KTO: memory users forget
        self.tracker = Tracker(model, optimizer, mode=self.mode, config=self.config,
                               warmup_steps=self.warmup_steps, output=self.output,
                               extra_models=[ref] if isinstance(ref, torch.nn.Module) else [])
        self.tracker.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.tracker is not None and self.steps is not None and state.global_step - self._first_step >= self.steps:
            self._finish(state)

    def on_train_end(self, args, state, control, **kwargs):
        if self.tracker is not None:
            self._finish(state)

    def _finish(self, state) -> None:
        tracker, self.tracker = self.tracker, None
        self.record = tracker.stop()
        if self.summary:
            from profiler.summary import print_summary

            print_summary(self.record, str(self.output))
        if self.picture:
            from profiler.learn.timeline import plot_timeline

            plot_timeline(self.record, self.picture)
        self.figures = key_figures(self.record)
        self._log(state)

    def _log(self, state) -> None:
        if self.trainer is not None:
            self.trainer.log(dict(self.figures))  # reaches every reporter (console, TensorBoard, W&B ...)
            return
        state.log_history.append({**self.figures, "step": state.global_step})
        logger.warning("llm-memprof: %s; line in %s", ", ".join(f"{k}={v:.2f}" for k, v in self.figures.items()),
                       self.output)


def key_figures(record: dict) -> dict[str, float]:
    """The numbers worth a log line, in MiB (2^20 bytes; the line keeps bytes): whole-profile and
    steady-step peaks, and the peak of each phase of the steady (last profiled) step."""
    pk = record.get("peaks") or {}
    out = {f"memprof/{k.removesuffix('_bytes')}_MiB": v / MiB for k, v in pk.items() if v is not None}
    steps = [p["step"] for p in record["phases"]]
    for p in record["phases"]:
        if steps and p["step"] == max(steps):
            key = f"memprof/steady_{p['phase']}_peak_MiB"
            out[key] = max(out.get(key, 0.0), p["peak_allocated_bytes"] / MiB)
    return out


def profile_trainer(trainer: Any, **kwargs: Any) -> MemoryProfilerCallback:
    """Add a MemoryProfilerCallback to `trainer` (first in line, so its figures go through `trainer.log`)."""
    cb = MemoryProfilerCallback(trainer=trainer, **kwargs)
    trainer.callback_handler.callbacks.insert(0, cb)
    return cb
