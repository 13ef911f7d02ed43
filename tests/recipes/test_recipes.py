"""Recipes (profiler/recipes/stacks.py): TRL / Trainer defaults fill unset keys, plain keeps every hash, and the loop
they select (chunked loss, float32 outputs, clipping, accumulation, bf16 adapters) simulates byte for byte what a
real CPU run allocates. Run: `python -m pytest tests/recipes/test_recipes.py -q`."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS, tiny

from profiler.config import ConfigError, load_config
from profiler.measure.harness import run
from profiler.simulate.backend import simulate

pytest.importorskip("trl")

TRL_QLORA = {"train.gradient_checkpointing": True, "train.autocast": "bf16", "optimizer.name": "adamw_fused",
             "train.max_grad_norm": 1.0, "train.loss": "chunked", "regime.prepare_kbit": False,
             "regime.lora.dtype": "bfloat16"}


def _base(kind: str, **extra) -> dict:
    regime = {"kind": "qlora", "bits": 4} if kind == "qlora4" else {"kind": kind}
    return {"model": {"arch": "tiny-llama"}, "regime": regime, **extra}


def _peaks(record: dict) -> list[tuple]:
    return [(p["phase"], p["step"], p["peak_allocated_bytes"], p["allocated_bytes"]) for p in record["phases"]]


def test_plain_and_unused_new_keys_keep_the_hash_of_every_shipped_config():
    for path in sorted(CONFIGS.glob("*.yaml")):
        before = load_config(path)
        same = load_config(path, ["recipe=plain", "train.loss=full", "train.max_grad_norm=0",
                                  "train.use_reentrant=false", "train.grad_accum_steps=1"])
        assert same.config_hash() == before.config_hash(), path.name
        assert before.recipe_defaults == {}
    moved = load_config(CONFIGS / "tiny_lora.yaml", ["train.max_grad_norm=1"])
    assert moved.config_hash() != load_config(CONFIGS / "tiny_lora.yaml").config_hash()


def test_trl_recipe_sets_sftconfig_defaults_for_qlora_and_lists_them():
    cfg = load_config(None, base=_base("qlora4", recipe="trl"))
    got = {k: v for k, (v, _) in cfg.recipe_defaults.items()}
    assert got == TRL_QLORA
    assert cfg.train.gradient_checkpointing and cfg.train.autocast == "bf16" and not cfg.regime.prepare_kbit
    assert cfg.regime.lora.dtype == "bfloat16" and cfg.ignored_keys == []


def test_trl_recipe_on_lora_sets_no_qlora_key_and_notes_nothing():
    cfg = load_config(None, base=_base("lora", recipe="trl"))
    assert "regime.prepare_kbit" not in cfg.recipe_defaults and "regime.lora.dtype" not in cfg.recipe_defaults
    assert cfg.regime.lora.dtype == "float32" and cfg.ignored_keys == []


def test_explicit_keys_beat_the_recipe():
    cfg = load_config(None, ["train.gradient_checkpointing=false", "regime.prepare_kbit=true"],
                      base=_base("qlora4", recipe="trl", optimizer={"name": "adamw"}))
    assert not cfg.train.gradient_checkpointing and cfg.regime.prepare_kbit and cfg.optimizer.name == "adamw"
    assert {"train.gradient_checkpointing", "regime.prepare_kbit", "optimizer.name"}.isdisjoint(cfg.recipe_defaults)


def test_trainer_recipe_sets_bf16_optim_and_clipping_not_checkpointing():
    cfg = load_config(None, base=_base("qlora4", recipe="trainer"))
    assert {k: v for k, (v, _) in cfg.recipe_defaults.items()} == {
        "train.autocast": "bf16", "optimizer.name": "adamw_fused", "train.max_grad_norm": 1.0}
    assert not cfg.train.gradient_checkpointing and cfg.regime.prepare_kbit


def test_a_bad_recipe_is_one_line():
    with pytest.raises(ConfigError, match=r"^recipe: 'axolotl' is not allowed; allowed: 'plain', 'trl' or 'trainer'"):
        load_config(None, base=_base("lora", recipe="axolotl"))


@pytest.mark.parametrize("kind", ["lora", "qlora4"])
def test_trl_loop_simulates_what_a_real_cpu_run_allocates(kind):
    """Chunked loss (TRL's torch path on CPU), float32 outputs, bf16 adapters, clipping, fused AdamW, checkpointing,
    two micro-batches: the fake run on a CPU target equals the real one byte for byte."""
    name = "qlora4" if kind == "qlora4" else "lora"
    cfg = tiny(name, "recipe=trl", "train.steps=1", "train.autocast=bf16", "train.gradient_checkpointing=true",
               "optimizer.name=adamw_fused", "train.grad_accum_steps=2", "train.max_grad_norm=1.0",
               "train.loss=chunked", "regime.lora.dropout=0")
    if kind == "qlora4":
        cfg = load_config(None, ["regime.prepare_kbit=false", "regime.lora.dtype=bfloat16"],
                          base=cfg.model_dump(exclude_unset=True))
    real, fake = run(cfg), simulate(cfg)
    assert (real["status"], fake["status"]) == ("ok", "ok"), (real["error"], fake["error"])
    assert [p["phase"] for p in real["phases"] if p["step"] == 1][0] == "accumulate"
    assert _peaks(fake) == _peaks(real)


def test_chunked_loss_removes_the_full_logits():
    """On a CUDA target the chunked loss keeps one [tokens, 32768] tile instead of (batch, seq, vocab) logits: a
    long sequence of a large-vocabulary model peaks lower in the forward."""
    common = ["train.seq_len=2048", "train.batch_size=1", "device=cuda", "train.steps=1", "model.arch=qwen2.5-0.5b",
              "train.autocast=bf16"]
    full = simulate(tiny("lora", *common))
    chunked = simulate(tiny("lora", *common, "train.loss=chunked"))
    f_full = max(p["peak_allocated_bytes"] for p in full["phases"] if p["phase"] == "forward")
    f_chunk = max(p["peak_allocated_bytes"] for p in chunked["phases"] if p["phase"] == "forward")
    vocab = 151936
    # full logits: bf16 (autocast) + the float32 upcast in the loss: 6 bytes per logit; chunked: a bf16 tile
    assert f_full - f_chunk > 0.8 * (2047 * vocab * 6 - 2047 * 32768 * 2)


def test_cuda_target_runs_the_triton_path_with_no_tile_temporaries():
    """TRL's kernels on the CUDA path allocate nothing: forward holds one bf16 [n, 32768] tile beside the inputs and
    the float32 running statistics; the CPU path adds float32 copies of the whole tile."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from trl.kernels import ChunkedLogProbFunction

    from profiler.measure.probes.tracker import TensorTracker
    from profiler.simulate.trl_cuda import trl_cuda_kernels

    def forward_peak(cuda: bool) -> int:
        tracker = TensorTracker()
        with FakeTensorMode(), trl_cuda_kernels(cuda), tracker:
            hidden = torch.empty((1000, 64), dtype=torch.bfloat16)
            weight = torch.empty((40000, 64), dtype=torch.bfloat16)
            targets = torch.zeros((1000,), dtype=torch.long)
            with tracker.phase("forward", 0):
                out = ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, 32768, None, 1.0,
                                                   ("log_probs",))
                del out
            return tracker.phases[-1].peak_bytes

    inputs = 1000 * 64 * 2 + 40000 * 64 * 2 + 1000 * 8
    stats = 7 * 1000 * 4  # running max, sum_exp, x_sum_exp, sq_sum_exp, z_sum, max_before_target, target_logit
    tile = 1000 * 32768 * 2
    ends = 2 * 1000 * 4  # log_z and log_probs, computed while the tile buffer is still referenced
    assert forward_peak(True) == inputs + stats + tile + ends
    assert forward_peak(False) > inputs + stats + tile + 1000 * 32768 * 4  # the CPU fold's float32 tile


def test_fused_adamw_state_in_components_equals_the_simulated_state():
    """transformers' default optim (adamw_torch_fused): two moments and a device `step` tensor per parameter, no
    foreach temporaries in the step."""
    from profiler.formulas import estimate

    cfg = tiny("full", "optimizer.name=adamw_fused", "device=cuda", "train.steps=1")
    rec = simulate(cfg)
    step = [p for p in rec["phases"] if p["phase"] == "optimizer_step"][-1]["breakdown"]
    assert estimate("components", cfg).get("optimizer") == step["optimizer"]
    assert step["temporaries"] == 0
