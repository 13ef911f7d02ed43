"""The truth side of the dry-run test for loops without a Trainer: the script's real CPU run, profiled where the
dry-run profiles it (tests/commands/test_dryrun.py; `trace` profiles Trainers only).

    python tests/commands/loop_truth.py OUT STEPS SCRIPT ARGS

`track`'s Tracker (profiler.measure.track) opens at the first forward of a model built by transformers
(`_from_config` / `from_pretrained`), the optimizer joins at its first step, and after STEPS optimizer steps
the record goes to OUT (JSON) and the process ends, as profiler/dryrun/child.py does on fake tensors.
"""

from __future__ import annotations

import json
import os
import runpy
import sys

from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from transformers.modeling_utils import PreTrainedModel

from profiler.measure.track import Tracker, unwrap_optimizer

OUT, STEPS, SCRIPT = sys.argv[1], int(sys.argv[2]), sys.argv[3]
STATE: dict = {"tracker": None, "steps": 0}


def on_forward(module, args, kwargs) -> None:
    if STATE["tracker"] is None:
        tr = STATE["tracker"] = Tracker(module, None, mode="breakdown", warmup_steps=1)
        tr.start()
        tr._on_forward(module, args, kwargs)


def hooked(native):
    def build(cls, *args, **kwargs):
        model = native.__func__(cls, *args, **kwargs)
        if not getattr(model, "_loop_truth_hooked", False):
            model._loop_truth_hooked = True
            model.register_forward_pre_hook(on_forward, with_kwargs=True)
        return model

    return classmethod(build)


def step_pre(optimizer, args, kwargs) -> None:
    tr = STATE["tracker"]
    if tr is not None and tr.optimizer is None:
        tr.optimizer = unwrap_optimizer(optimizer)
        tr.tracker.attach(None, tr.optimizer)
        tr._handles.append(tr.optimizer.register_step_pre_hook(tr._on_step_pre))
        tr._handles.append(tr.optimizer.register_step_post_hook(tr._on_step_post))


def step_post(optimizer, args, kwargs) -> None:
    STATE["steps"] += 1
    if STATE["tracker"] is not None and STATE["steps"] >= STEPS:
        with open(OUT, "w") as f:
            json.dump(STATE["tracker"].stop(), f, default=str)
        sys.stdout.flush()
        os._exit(0)


PreTrainedModel._from_config = hooked(PreTrainedModel._from_config)
PreTrainedModel.from_pretrained = hooked(PreTrainedModel.from_pretrained)
register_optimizer_step_pre_hook(step_pre)
register_optimizer_step_post_hook(step_post)
sys.argv = sys.argv[3:]
sys.path.insert(0, os.path.dirname(os.path.abspath(SCRIPT)))
runpy.run_path(SCRIPT, run_name="__main__")
