"""Estimators on hand-computed cases; `components` against real tiny models built and measured on the CPU."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny

from profiler.config import MODELS_DIR, load_config
from profiler.formulas import ESTIMATORS, NotApplicable, estimate, estimate_all
from profiler.formulas.components import activations, components_estimate
from profiler.formulas.llamafactory import load_table, table_gb
from profiler.formulas.rules import rule_1p2x_bytes

P7 = 6_738_415_616  # llama-2-7b, counted on the meta device
P13 = 13_015_864_320


def arch_cfg(arch: str, *overrides: str):
    return load_config(None, [f"model.arch={arch}", "device=cuda", *overrides])


def test_registry_names_and_totals():
    assert list(ESTIMATORS) == [
        "rule_1p2x",
        "adam_8_bytes",
        "adam_4x",
        "mixed_precision_16",
        "accelerate",
        "llamafactory_table",
        "components",
        "deepspeed_zero",
    ]
    for e in estimate_all(arch_cfg("llama-2-7b")):
        assert e.total == sum(e.components.values()) > 0, e.estimator
        assert e.source.startswith(("http", "this repository")), e.estimator
        assert ESTIMATORS[e.estimator].__doc__ and "Source" in ESTIMATORS[e.estimator].__doc__


def test_rule_1p2x_13b_16bit_is_31p2_gb():
    w, over = rule_1p2x_bytes(13 * 10**9, 16)
    assert (w, over, w + over) == (26 * 10**9, 52 * 10**8, 312 * 10**8)
    est = estimate("rule_1p2x", arch_cfg("llama-2-13b"))
    assert est.total == P13 * 2 + P13 * 2 // 5
    assert round(est.total / 1e9, 1) == 31.2


def test_per_param_rules_on_7b_full_bf16():
    cfg = arch_cfg("llama-2-7b")
    assert estimate("adam_8_bytes", cfg).total == 8 * P7
    assert estimate("adam_4x", cfg).components == {
        "weights": 2 * P7,
        "gradients": 2 * P7,
        "optimizer": 4 * P7,
        "activations": 0,
        "temporaries": 0,
        "overhead": 0,
    }
    assert estimate("mixed_precision_16", cfg).total == 16 * P7
    assert estimate("adam_4x", arch_cfg("llama-2-7b", "model.dtype=float32")).total == 16 * P7


def test_llamafactory_table_points_and_interpolation():
    assert estimate("llamafactory_table", arch_cfg("llama-2-7b", "regime.kind=lora")).total == 16 * 10**9
    assert estimate("llamafactory_table", arch_cfg("llama-2-7b", "regime.kind=qlora")).total == 6 * 10**9
    assert estimate("llamafactory_table", arch_cfg("llama-2-13b")).total == 320 * 10**9
    sizes = load_table()["params"]
    mid = int((sizes["7B"] + sizes["13B"]) / 2)
    assert table_gb("lora", mid) == pytest.approx(24.0)
    assert table_gb("qlora_4bit", int(sizes["7B"]) // 2) == pytest.approx(3.0)  # proportional below 7B
    with pytest.raises(NotApplicable):
        estimate("llamafactory_table", arch_cfg("llama-2-7b", "regime.kind=inference"))
    names = [e.estimator for e in estimate_all(arch_cfg("llama-2-7b", "regime.kind=inference"))]
    assert "llamafactory_table" not in names and "components" in names


@pytest.mark.parametrize("dtype, acc_dtype", [("bfloat16", "float16"), ("float32", "float32")])
def test_accelerate_matches_installed_accelerate(dtype, acc_dtype):
    from accelerate.commands.estimate import estimate_training_usage
    from accelerate.utils import calculate_maximum_sizes
    from transformers import AutoConfig, AutoModel

    hf = AutoConfig.from_pretrained(str(MODELS_DIR / "llama-2-7b.json"))
    with torch.device("meta"):
        model = AutoModel.from_config(hf, dtype=torch.float32)  # as `accelerate estimate-memory` builds it
    size, _ = calculate_maximum_sizes(model)
    expected = max(estimate_training_usage(size, acc_dtype).values())
    est = estimate("accelerate", arch_cfg("llama-2-7b", f"model.dtype={dtype}"))
    assert est.total == expected
    fp32_size = 4 * (P7 - 32000 * 4096) + 2 * 64 * 4  # no lm_head in AutoModel; + two fp32 rotary buffers
    assert est.total == (2 if acc_dtype == "float16" else 4) * fp32_size
    with pytest.raises(NotApplicable):
        estimate("accelerate", arch_cfg("llama-2-7b", "regime.kind=lora"))


# ---- components vs real tiny models on the CPU -------------------------------------------------------------


def _storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total


def _real_step(cfg):
    """Build the real model with the regime applied, run one step; count weights/grads/optimizer bytes."""
    from profiler.measure.loading import load_model
    from profiler.measure.model_stats import weight_tensors
    from profiler.measure.optimizers import make_optimizer
    from profiler.measure.regimes import apply_regime, trainable_parameters

    loaded = load_model(cfg)
    model = apply_regime(loaded.model, cfg)
    weights = _storage_bytes(weight_tensors(model))
    params = trainable_parameters(model)
    opt = make_optimizer(cfg.optimizer, params)
    batch = torch.randint(0, loaded.hf_config.vocab_size, (cfg.train.batch_size, cfg.train.seq_len))
    model(input_ids=batch, labels=batch).loss.backward()
    grads = _storage_bytes(p.grad for p in params)
    opt.step()
    state = _storage_bytes(t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor))
    return weights, grads, state


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("full", ["optimizer.name=adamw"]),
        ("freeze", ["optimizer.name=adam"]),
        ("lora", ["optimizer.name=sgd_momentum"]),
        ("qlora4", []),
        ("qlora4", ["regime.double_quant=false", "regime.quant_type=fp4"]),
        ("qlora8", ["optimizer.name=sgd"]),
    ],
)
def test_components_weights_gradients_optimizer_exact(name, overrides):
    cfg = tiny(name, *overrides)
    weights, grads, state = _real_step(cfg)
    d = components_estimate(cfg).details
    assert (d["weights"], d["gradients"], d["optimizer_state"]) == (weights, grads, state)


def test_components_8bit_optimizer_state_exact():
    pytest.importorskip("bitsandbytes")
    cfg = tiny("full", "optimizer.name=adamw_8bit", "model.dtype=float32")
    try:
        _, _, state = _real_step(cfg)
    except (RuntimeError, NotImplementedError) as exc:  # no CPU kernel for 8-bit optimizers in this build
        pytest.skip(f"bitsandbytes 8-bit optimizer unavailable on CPU: {exc}")
    assert components_estimate(cfg).details["optimizer_state"] == state


def _saved_activation_bytes(cfg) -> int:
    """Unique storage bytes autograd saves in one forward (parameters and quantization state excluded)."""
    from profiler.measure.loading import load_model
    from profiler.measure.model_stats import weight_tensors
    from profiler.measure.regimes import apply_regime

    loaded = load_model(cfg)
    model = apply_regime(loaded.model, cfg)
    weights = {t.untyped_storage().data_ptr() for t in weight_tensors(model)}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in weights:
            seen.setdefault(st.data_ptr(), st.nbytes())
        return t

    batch = torch.randint(0, loaded.hf_config.vocab_size, (cfg.train.batch_size, cfg.train.seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=batch, labels=batch)
    return sum(seen.values())


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory):
    """A llama a bit larger than tiny (GQA, b*s != h) so each term is distinguishable."""
    cfg = json.loads((MODELS_DIR / "tiny-llama.json").read_text())
    cfg.update(
        hidden_size=256, intermediate_size=688, num_attention_heads=8, num_key_value_heads=4, vocab_size=1000
    )
    path = tmp_path_factory.mktemp("arch") / "small-llama.json"
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("full", []),
        ("full", ["model.attn_implementation=eager"]),
        ("full", ["model.dtype=float32"]),
        ("freeze", []),
        ("lora", []),
        ("lora", ["regime.lora.dropout=0"]),
        ("qlora4", []),
    ],
)
def test_components_activations_within_10_percent(small_llama, name, overrides):
    cfg = tiny(name, f"model.arch={small_llama}", "train.batch_size=2", "train.seq_len=96", *overrides)
    measured = _saved_activation_bytes(cfg)
    a = activations(cfg)  # CPU: SDPA's flash kernel (logsumexp), eager: the s x s probabilities
    predicted = a["layers"] + a["tail"] + a["logits"]
    assert abs(predicted - measured) <= 0.10 * measured, (predicted, measured)


def test_components_grows_with_batch_and_checkpointing_saves():
    cfg = arch_cfg("llama-2-7b", "regime.kind=lora")
    small, big = (components_estimate(cfg, b=b).details["activations_saved"] for b in (1, 8))
    assert big > 7 * small
    ckpt = arch_cfg("llama-2-7b", "regime.kind=lora", "train.gradient_checkpointing=true")
    assert components_estimate(ckpt, b=8).details["activations_saved"] < big / 4


def test_components_inference_has_kv_cache():
    cfg = arch_cfg("llama-2-7b", "regime.kind=inference", "train.seq_len=1000")
    est = estimate("components", cfg)
    assert est.details["kv_cache"] == 2 * 32 * 4096 * 2 * 1000  # K and V, 32 layers, bf16
    assert est.get("activations") == 0  # nothing is saved for backward under no_grad
    assert est.components["temporaries"] >= est.details["kv_cache"]
    assert est.get("gradients") == est.get("optimizer") == 0


PUBLISHED_PARAMS = {  # parameter counts published on each model's Hub card / safetensors index
    "gpt2": 124_439_808, "llama-2-7b": 6_738_415_616, "llama-2-13b": 13_015_864_320,
    "llama-2-70b": 68_976_648_192, "llama-3-8b": 8_030_261_248, "mistral-7b": 7_241_732_096,
    "qwen2.5-0.5b": 494_032_768, "qwen2.5-7b": 7_615_616_512, "tiny-llama": 139_584,
    "gemma-2-9b": 9_241_705_984, "gemma-3-1b": 999_885_952, "phi-3-mini": 3_821_079_552,
    "phi-4": 14_659_507_200, "olmo-2-7b": 7_298_617_344, "pythia-6.9b": 6_857_302_016,
    "falcon-7b": 6_921_720_704, "qwen3-8b": 8_190_735_360, "smollm2-1.7b": 1_711_376_384,
    "yi-34b": 34_388_917_248, "qwen2.5-14b": 14_770_033_664, "qwen2.5-72b": 72_706_203_648,
    # llama-3.2-3b: the full fine-tune's num_trainable_params in PEFT's MetaMathQA results (tied head counted once)
    "llama-3.2-3b": 3_212_749_824,
}


def test_every_bundled_architecture_has_its_published_parameter_count():
    from profiler.config import bundled_architectures
    from profiler.formulas.arch import arch_of

    assert set(PUBLISHED_PARAMS) <= set(bundled_architectures())
    for name, count in PUBLISHED_PARAMS.items():
        cfg = load_config(None, [], base={"model": {"arch": name}, "device": "cpu"})
        assert arch_of(cfg).total_params == count, name
