"""Tiny MoE (tiny-mixtral): simulate vs real CPU runs, forced routing, what peft/bitsandbytes do to fused experts."""

from __future__ import annotations

import pytest
import torch

from profiler.config import load_config
from profiler.measure import harness
from profiler.measure.harness import run
from profiler.simulate.backend import force_routing, forced_routing, simulate

LORA = ["model.arch=tiny-mixtral", "regime.lora.dropout=0", "train.steps=1"]


def _peaks(record: dict) -> dict:
    assert record["status"] == "ok", record.get("error")
    return {(p["phase"], p["step"]): p["peak_allocated_bytes"] for p in record["phases"]}


def _run_routed(cfg, routing: str | None, monkeypatch) -> dict:
    """A real CPU run; with `routing`, the routers are forced the way simulate assumes (README: how to compare)."""
    if routing is not None:
        real_load = harness.load_model

        def load(c):
            loaded = real_load(c)
            assert len(force_routing(loaded.model, routing)) == 2  # one router per layer
            return loaded

        monkeypatch.setattr(harness, "load_model", load)
    return run(cfg)


@pytest.fixture(scope="module")
def simulated():
    return simulate(load_config("configs/tiny_lora.yaml", LORA))


def test_lora_simulate_matches_real_cpu_runs_under_any_routing(simulated, monkeypatch):
    cfg = load_config("configs/tiny_lora.yaml", LORA)
    sim = _peaks(simulated)
    for routing in (None, "worst_case"):  # the model's own (random) routing, and every token to experts 0, 1
        real = run(cfg) if routing is None else _run_routed(cfg, routing, monkeypatch)
        peaks = _peaks(real)
        assert peaks.keys() == sim.keys()
        for key, value in peaks.items():
            assert sim[key] == pytest.approx(value, rel=0.02), (routing, key)
        assert real["model"]["trainable_params"] == simulated["model"]["trainable_params"]


def test_simulated_line_records_routing_and_warns_about_fused_experts(simulated):
    assert simulated["config"]["moe"] == {"routing": "balanced"}
    assert any("ParamWrapper" in w and "target_modules" in w for w in simulated["warnings"])
    # peft's count for fused experts: attention (4 linears) + router + gate_up at rank 2r + down, per layer
    r, e, h, i, kv, n_experts = 4, 4, 64, 128, 32, 4
    attn = r * (h + h) * 2 + r * (h + kv) * 2
    per_layer = attn + r * (h + n_experts) + e * 2 * r * (h + 2 * i) + e * r * (i + h)
    assert simulated["model"]["trainable_params"] == 2 * per_layer


def test_forced_routing_balances_or_piles_up_and_restores():
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained("profiler/models/tiny-mixtral.json"),
                                             dtype=torch.float32)
    router = model.model.layers[0].mlp.gate
    x = torch.randn(2, 6, 64)
    for routing, counts in (("balanced", [6, 6, 6, 6]), ("worst_case", [12, 12, 0, 0])):  # 12 tokens x top-2
        with forced_routing(model, routing) as n:
            assert n == 2
            _, scores, idx = router(x)
        assert torch.bincount(idx.flatten(), minlength=4).tolist() == counts
        assert torch.allclose(scores.sum(-1), torch.ones(12))
    assert "forward" not in router.__dict__  # the class's own routing is back


def test_qlora_leaves_fused_experts_unquantized_and_prepare_kbit_upcasts_them(tmp_path, monkeypatch):
    from profiler.measure.loading import load_model
    from profiler.measure.regimes import apply_regime

    monkeypatch.setenv("LLM_MEMPROF_CACHE", str(tmp_path))
    for prepare, dtype in ((True, torch.float32), (False, torch.bfloat16)):
        cfg = load_config("configs/tiny_qlora4.yaml", [*LORA, f"regime.prepare_kbit={str(prepare).lower()}"])
        model = apply_regime(load_model(cfg).model, cfg)
        params = dict(model.named_parameters())
        experts = [p for n, p in params.items() if n.endswith(("gate_up_proj", "down_proj"))]
        assert len(experts) == 4 and all(p.dtype == dtype and p.dim() == 3 for p in experts)
        assert all(type(p).__name__ == "Params4bit" for n, p in params.items() if "q_proj.base_layer" in n)


def test_components_agree_with_simulate_on_the_tiny_moe(simulated):
    from profiler.formulas.components import components_estimate
    from profiler.formulas.params import param_plan

    cfg = load_config("configs/tiny_lora.yaml", LORA)
    est = components_estimate(cfg)
    assert param_plan(cfg).trainable_numel == simulated["model"]["trainable_params"]
    steady = {p["phase"]: p["peak_allocated_bytes"] for p in simulated["phases"] if p["step"] == 1}
    for phase, peak in steady.items():
        assert est.details[f"peak_{phase}"] == pytest.approx(peak, rel=0.10), phase
