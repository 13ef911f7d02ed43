"""CUDA runs (marked gpu, skipped without CUDA). CPU siblings: tests/measure/test_run.py runs the same harness,
regimes and result path on the tiny model; tests/measure/test_nvml.py drives the sampler with a synthetic reader."""

from __future__ import annotations

import pytest
from conftest import CONFIGS, gpu

from profiler.config import load_config
from profiler.measure.harness import run
from profiler.schema import RunRecord

REGIMES = ["full", "freeze", "lora", "qlora8", "qlora4", "inference"]


def small_cuda_run(regime: str, steps: int) -> dict:
    """A shipped llama7b_<regime> config on qwen2.5-0.5b: every regime in seconds on one GPU."""
    cfg = load_config(CONFIGS / f"llama7b_{regime}.yaml",
                      ["model.arch=qwen2.5-0.5b", "train.seq_len=256", f"train.steps={steps}"])
    return run(cfg, use_tracker=True)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("regime", REGIMES)
def test_cuda_run_orders_nvml_reserved_allocated_weights(regime):
    rec = small_cuda_run(regime, steps=2)
    RunRecord.model_validate(rec)
    assert rec["status"] == "ok", rec["error"]
    pk = rec["peaks"]
    assert pk["nvml_peak_bytes"] >= pk["peak_reserved_bytes"] >= pk["peak_allocated_bytes"]
    assert pk["peak_allocated_bytes"] >= rec["model"]["weight_bytes"]
    assert rec["env"]["driver"] and rec["env"]["cuda"]
    assert rec["nvml"]["samples"] > 0


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("regime", REGIMES)
def test_tracker_peak_within_2_percent_of_max_memory_allocated(regime):
    """CPU sibling: tests/measure/test_tracker.py checks the same tracker against an independent count."""
    rec = small_cuda_run(regime, steps=1)
    assert rec["status"] == "ok", rec["error"]
    for p in rec["phases"]:
        if p["phase"] == "load":
            continue  # loading stages tensors through paths the allocator sees but no op creates
        bd = p["breakdown"]
        tracked = sum(bd[k] for k in ("weights", "gradients", "optimizer", "activations", "temporaries"))
        assert abs(p["peak_allocated_bytes"] - tracked) <= 0.02 * p["peak_allocated_bytes"], p
        assert bd["allocator"] >= 0 and bd["context"] > 0
