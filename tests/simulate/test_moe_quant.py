"""regime.quantize_experts (axolotl's quantize_moe_experts): simulate vs a real CPU run, components vs simulate,
`fit` on Mixtral-8x7B, and the one-line refusals. Run: `python -m pytest tests/simulate/test_moe_quant.py -q`."""

from __future__ import annotations

import importlib.util
import json

import pytest

from profiler.cli import main
from profiler.config import REPO_ROOT, ConfigError, load_config

_spec = importlib.util.spec_from_file_location("grid_consistency", REPO_ROOT / "scripts" / "grid_consistency.py")
grid = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grid)

TINY = ["model.arch=tiny-mixtral", "regime.lora.dropout=0", "train.steps=1", "regime.prepare_kbit=false",
        "regime.quantize_experts=true"]
ATTENTION = "regime.lora.target_modules=[q_proj,k_proj,v_proj,o_proj]"


def _packed_bytes(n: int) -> int:
    """bitsandbytes 4-bit with double quant, written out from its format: packed n/2, uint8 absmax per 64-block,
    fp32 absmax per 256 of those, fp32 offset, 16-entry fp32 code, 256-entry fp32 nested code."""
    blocks = -(-n // 64)
    return -(-n // 2) + blocks + 4 * -(-blocks // 256) + 4 + 16 * 4 + 256 * 4


def test_simulate_matches_a_real_cpu_run_with_quantized_experts(tmp_path, monkeypatch):
    from profiler.measure.harness import run
    from profiler.simulate.backend import simulate

    monkeypatch.setenv("LLM_MEMPROF_CACHE", str(tmp_path))
    cfg = load_config("configs/tiny_qlora4.yaml", TINY)  # all-linear: attention + router adapters
    sim, real = simulate(cfg), run(cfg)
    assert sim["status"] == real["status"] == "ok", (sim.get("error"), real.get("error"))
    for key in ("weight_bytes_by_dtype", "trainable_params", "quantized_params", "total_params"):
        assert sim["model"][key] == real["model"][key], key
    hf = json.loads((REPO_ROOT / "profiler/models/tiny-mixtral.json").read_text())
    layers, e, h, i = (hf[k] for k in ("num_hidden_layers", "num_local_experts", "hidden_size", "intermediate_size"))
    kv = hf["num_key_value_heads"] * h // hf["num_attention_heads"]
    attention = layers * (2 * h * h + 2 * h * kv)
    assert real["model"]["quantized_params"] == attention + layers * 3 * e * h * i
    assert any(w.startswith("regime.quantize_experts: ") and "grouped_mm keeps that copy" in w for w in sim["warnings"])
    r = cfg.regime.lora.r  # peft 0.21.2 leaves the parametrized experts without adapters; the router keeps its own
    assert real["model"]["trainable_params"] == layers * (r * (4 * h + 2 * h + 2 * kv) + r * (h + e))
    sim_peaks = {(p["phase"], p["step"]): p["peak_allocated_bytes"] for p in sim["phases"] if p["phase"] != "load"}
    real_peaks = {(p["phase"], p["step"]): p["peak_allocated_bytes"] for p in real["phases"] if p["phase"] != "load"}
    assert sim_peaks.keys() == real_peaks.keys()
    for key, value in real_peaks.items():  # the real run quantizes after loading: its load peak is not compared
        assert sim_peaks[key] == pytest.approx(value, rel=0.01), key


@pytest.mark.parametrize("ckpt", [False, True])
@pytest.mark.parametrize("family", ["mixtral-8x7b", "qwen3-30b-a3b"])
def test_components_within_5_percent_of_simulate_with_quantized_experts(family, ckpt):
    from profiler.formulas.params import param_plan
    from profiler.simulate.backend import simulate

    point = {"family": family, "regime": "qlora4", "parallel": "none", "seq": 512, "batch": 1, "autocast": "none",
             "ckpt": ckpt, "routing": "balanced"}
    base = grid.config_of(point)
    cfg = load_config(None, ["regime.quantize_experts=true"], base=base.model_dump(exclude_unset=True))
    row = grid.compare(point, cfg=cfg)
    assert row["simulate_status"] == "ok"
    assert abs(row["pct"]) < 5, row
    rec = simulate(cfg)  # weights: components' 4-bit expert bytes against the fake model's storages
    assert param_plan(cfg).weight_bytes == pytest.approx(rec["model"]["weight_bytes"], rel=0.001)


def test_fit_mixtral_with_quantized_experts_drops_the_expert_bytes(capsys):
    from profiler.formulas.params import param_plan

    rc = main(["fit", "mixtral-8x7b", "--regime", "qlora4", "--gpu", "h100", "--seq", "256", "--no-search", "--json",
               "regime.quantize_experts=true", ATTENTION])
    out, err = capsys.readouterr()
    assert rc == 0, err
    res = json.loads(out)
    assert res["verdict"].startswith("fits: ") and res["config"]["regime"]["quantize_experts"] is True
    hf = json.loads((REPO_ROOT / "profiler/models/mixtral-8x7b.json").read_text())
    layers, e, h, i = (hf[k] for k in ("num_hidden_layers", "num_local_experts", "hidden_size", "intermediate_size"))
    per_layer = (e * 2 * i * h, e * h * i)  # gate_up_proj, down_proj
    drop = layers * sum(2 * n - _packed_bytes(n) for n in per_layer)  # bf16 -> bitsandbytes 4-bit
    off = load_config(None, ["regime.quantize_experts=false"], base=res["config"])
    before = param_plan(off).weight_bytes  # 16-bit experts (components' weights equal simulate's: other tests)
    assert res["breakdown"]["weights"] == pytest.approx(before - drop, rel=0.01)
    assert 3.5 < before / res["breakdown"]["weights"] < 4  # 45.1 of 46.7 B parameters are experts


@pytest.mark.parametrize("overrides,message", [
    (["regime.kind=lora"], r"^regime\.quantize_experts: true needs regime\.kind: qlora with regime\.bits: 4 "
                           r"\(here lora\); allowed: false, or kind qlora with bits 4$"),
    (["regime.kind=qlora", "regime.bits=8"], r"^regime\.quantize_experts: true needs regime\.kind: qlora .*"),
    (["regime.kind=qlora", "model.arch=tiny-llama"],
     r"^regime\.quantize_experts: true needs a mixture-of-experts model with fused experts \(tiny-llama has none\); "
     r"allowed: false$"),
    (["regime.kind=qlora", "parallel.strategy=fsdp2", "parallel.world_size=2"],
     r"^regime\.quantize_experts: true is modelled for one process only \(parallel\.strategy: fsdp2\); allowed: false"),
])
def test_quantize_experts_is_refused_in_one_line_outside_qlora4_moe(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.arch=tiny-mixtral", "regime.lora.dropout=0", "device=cpu", *overrides,
                           "regime.quantize_experts=true"])


def test_quantize_experts_false_keeps_the_config_hash():
    cfg = load_config("configs/tiny_qlora4.yaml", ["model.arch=tiny-mixtral", "regime.lora.dropout=0"])
    same = load_config("configs/tiny_qlora4.yaml", ["model.arch=tiny-mixtral", "regime.lora.dropout=0",
                                                    "regime.quantize_experts=false"])
    on = load_config("configs/tiny_qlora4.yaml", ["model.arch=tiny-mixtral", "regime.lora.dropout=0",
                                                  "regime.quantize_experts=true", "regime.prepare_kbit=false"])
    assert cfg.config_hash() == same.config_hash() != on.config_hash()


def test_cli_refusal_exits_2_with_one_line(capsys):
    rc = main(["simulate", "configs/tiny_lora.yaml", "model.arch=tiny-mixtral", "regime.lora.dropout=0",
               "regime.quantize_experts=true"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Traceback" not in err
    assert err.splitlines()[-1].endswith("regime.quantize_experts: true needs regime.kind: qlora with regime.bits: 4 "
                                         "(here lora); allowed: false, or kind qlora with bits 4")
