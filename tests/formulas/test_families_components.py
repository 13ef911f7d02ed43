"""`components` within 5 % of `simulate` (CUDA target) for the families whose blocks differ from Llama's:
Gemma-2 (eager, soft-capping, sandwich norms), Gemma-3 (qk-norm, sliding/global layers), OLMo-2 (post-norms,
full-width qk-norm), GPT-NeoX (parallel block, two norms on one input), Falcon-7B (one shared norm, multi-query
k/v that SDPA only takes on its math kernel, FalconLinear left unquantized) and GPT-2 (learned positions,
Conv1D, gelu_new, dropout). Stand-ins: the bundled real-size architecture cut to a few layers (every size of a
layer kept), seq 1024, so each simulation takes seconds; the real sizes are in the README table
(`python scripts/family_matrix.py --real-grid`). Run: `python -m pytest tests/formulas/test_families_components.py`."""

from __future__ import annotations

import json

import pytest

from profiler.config import MODELS_DIR, load_config
from profiler.formulas.components import components_estimate
from profiler.simulate.backend import simulate

# real-size architecture -> layers kept (Gemma-3: 6, so one global layer sits among five sliding ones)
STAND_INS = {"gemma-2-9b": 2, "gemma-3-1b": 6, "olmo-2-7b": 2, "pythia-6.9b": 2, "falcon-7b": 2, "gpt2": 2}
REGIMES = {"lora": {"kind": "lora"}, "qlora4": {"kind": "qlora", "bits": 4}, "full": {"kind": "full"}}


def stand_in(tmp_path_factory, name: str) -> str:
    hf = json.loads((MODELS_DIR / f"{name}.json").read_text())
    key = "n_layer" if "n_layer" in hf else "num_hidden_layers"
    hf[key] = STAND_INS[name]
    if "layer_types" in hf:
        hf["layer_types"] = hf["layer_types"][: STAND_INS[name]]
    path = tmp_path_factory.mktemp("arch") / f"{name}-{STAND_INS[name]}l.json"
    path.write_text(json.dumps(hf))
    return str(path)


@pytest.mark.parametrize("regime, checkpointing", [("full", False), ("lora", False), ("qlora4", True)])
@pytest.mark.parametrize("name", sorted(STAND_INS))
def test_components_within_5_percent_of_simulate(tmp_path_factory, name, regime, checkpointing):
    cfg = load_config(None, [], base={
        "model": {"arch": stand_in(tmp_path_factory, name)}, "device": "cuda", "regime": REGIMES[regime],
        "train": {"steps": 1, "warmup_steps": 1, "seq_len": 1024, "gradient_checkpointing": checkpointing}})
    sim = simulate(cfg)
    assert sim["status"] == "ok", sim["error"]
    est = components_estimate(cfg)
    predicted = est.total - est.get("overhead")  # CUDA context + allocator slack: not simulated
    steady = sim["peaks"]["steady_peak_allocated_bytes"]
    assert abs(predicted - steady) <= 0.05 * steady, (name, regime, checkpointing, predicted, steady)
    assert "not modelled" not in est.notes


@pytest.mark.parametrize("arch, overrides, kernel", [
    ("llama-3-8b", [], "flash"),  # bf16, grouped-query k/v with enable_gqa
    ("llama-3-8b", ["regime.kind=qlora"], "math"),  # fp32 (prepare_kbit): mem-efficient has no GQA
    ("llama-2-7b", ["regime.kind=qlora"], "efficient"),  # fp32, as many k/v heads as q heads
    ("falcon-7b", [], "math"),  # one k/v head handed to SDPA without enable_gqa
    ("gemma-2-9b", [], "eager"),  # transformers' choice: SDPA cannot soft-cap
    ("gpt2", ["device=cpu"], "math"),  # the CPU flash kernel takes no attention dropout
    ("pythia-6.9b", ["device=cpu"], "flash"),
])
def test_default_kernel_is_what_sdpa_would_dispatch(arch, overrides, kernel):
    from profiler.formulas.components import default_kernel

    cfg = load_config(None, [f"model.arch={arch}", *overrides], base={"device": "cuda"})
    assert default_kernel(cfg) == kernel
