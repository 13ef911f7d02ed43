"""components under `train.activation_offloading`: the saved activations TRL moves to the host leave the GPU
peaks, within 5 % of simulate on the 2-layer llama-3-8b stand-in (scripts/grid_consistency.py arch_source).
Run: `python -m pytest tests/formulas/test_act_offload_components.py`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from profiler.config import RunConfig
from profiler.formulas.components import components_estimate
from profiler.simulate.backend import simulate

MODELS = Path(__file__).resolve().parents[2] / "profiler" / "models"


def _cfg(tmp_path: Path, ckpt: bool, on: bool) -> RunConfig:
    hf = json.loads((MODELS / "llama-3-8b.json").read_text())
    hf["num_hidden_layers"] = 2
    path = tmp_path / "llama-3-8b-2l.json"
    path.write_text(json.dumps(hf))
    return RunConfig.model_validate({"model": {"arch": str(path)}, "device": "cuda", "regime": {"kind": "lora"},
                                     "train": {"batch_size": 1, "seq_len": 512, "steps": 1,
                                               "gradient_checkpointing": ckpt, "activation_offloading": on}})


@pytest.mark.parametrize("ckpt", [False, True], ids=["no-ckpt", "ckpt"])
def test_components_within_5_percent_of_simulate_with_offloading(tmp_path, ckpt):
    cfg = _cfg(tmp_path, ckpt, True)
    rec = simulate(cfg)
    assert rec["status"] == "ok", rec["error"]
    est = components_estimate(cfg).details
    for phase in ("forward", "backward"):
        sim = next(p["peak_allocated_bytes"] for p in rec["phases"] if p["phase"] == phase and p["step"] == 1)
        assert abs(est[f"peak_{phase}"] / sim - 1) < 0.05, (phase, est[f"peak_{phase}"], sim)
    off = components_estimate(_cfg(tmp_path, ckpt, False)).details
    if ckpt:  # the checkpoint's own hooks are innermost in the layers: nothing of theirs is offloaded
        assert "activations_offloaded_host" not in est and est["peak_forward"] == off["peak_forward"]
    else:
        assert est["activations_offloaded_host"] > 0
        assert off["peak_forward"] - est["peak_forward"] == est["activations_offloaded_host"]
