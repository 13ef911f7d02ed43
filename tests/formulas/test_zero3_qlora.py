"""ZeRO-3 + QLoRA 4-bit in `components` (issue 20 item 4), checked against bytes counted here from the architecture.

Formulas only (no simulation: DeepSpeed does not run on fake tensors). Run:
`python -m pytest tests/formulas/test_zero3_qlora.py -q`.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import CONFIGS

from profiler.config import REPO_ROOT, load_config
from profiler.formulas import estimate
from profiler.formulas.components import compute_dtype
from profiler.formulas.params import param_plan

# ZeRO-3 + QLoRA as PEFT's guide runs it (docs/source/accelerate/deepspeed.md): bf16 model, 4-bit base stored as
# bf16 (derived: regime.quant_storage), TRL's SFTTrainer (no prepare_model_for_kbit_training, bf16 adapters),
# gradient checkpointing. r = 16 on every linear but the head (configs/llama7b_qlora4.yaml).
Z3_QLORA_8B = ["model.arch=llama-3-8b", "train.seq_len=2048", "train.batch_size=1", "parallel.strategy=zero3",
               "regime.prepare_kbit=false", "regime.lora.dtype=bfloat16", "train.gradient_checkpointing=true"]


def _cfg(world: int, *extra: str):
    return load_config(CONFIGS / "llama7b_qlora4.yaml", [*Z3_QLORA_8B, f"parallel.world_size={world}", *extra])


def _llama3_8b_bytes(r: int = 16) -> dict[str, int]:
    """Llama-3-8B counted from its config.json, as bitsandbytes 0.50 stores a double-quant NF4 weight of n values
    (functional.py quantize_4bit): n/2 packed bytes; one uint8 absmax per 64-block; per 256 of those an fp32
    absmax, plus a 256-entry fp32 code and an fp32 offset; the 16-entry fp32 NF4 code. The packed bytes are
    parameters (ZeRO-3 partitions them); the rest is the QuantState on the weight (whole on every rank)."""
    c = json.loads((REPO_ROOT / "profiler" / "models" / "llama-3-8b.json").read_text())
    h, i, L, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q k v o gate up down: (in, out)
    packed = state = lora = 0
    for fin, fout in shapes:
        n = fin * fout
        blocks = math.ceil(n / 64)
        packed += n // 2
        state += blocks + 4 * math.ceil(blocks / 256) + 256 * 4 + 4 + 16 * 4
        lora += r * (fin + fout)
    norms = h * 2  # input_layernorm, post_attention_layernorm
    return {"packed": L * packed, "state": L * state, "lora": L * lora, "layers": L,
            "layer": packed + 2 * (norms + lora),  # one layer as ZeRO-3 gathers it: packed + bf16 norms, adapters
            "head": 2 * v * h, "unquantized": 2 * (2 * v * h + norms * L + h), "buffers": 2 * 64 * 4}


@pytest.mark.parametrize("world", [2, 8])
def test_zero3_qlora_per_rank_bytes_against_the_architecture(world):
    """Per rank: the packed storage, bf16 embeddings/norms/head and bf16 adapters divided by the world size,
    the quant state whole; DeepSpeed's optimizer 12 bytes per adapter parameter (fp32 master + two fp32 Adam
    moments) divided too; the gathered bytes at the loss: the bf16 head + one 4-bit layer; before DeepSpeed
    partitions, every rank holds the whole quantized model with peft's fp32 adapters (the load phase)."""
    b = _llama3_8b_bytes()
    cfg = _cfg(world)
    assert cfg.regime.quant_storage == "bfloat16"  # derived, as PEFT's recipe sets bnb_4bit_quant_storage
    est = estimate("components", cfg)
    sharded = b["packed"] + b["unquantized"] + 2 * b["lora"] + b["buffers"]
    assert abs(est.details["optimizer_step:weights"] - (math.ceil(sharded / world) + b["state"])) <= 4096
    assert abs(est.details["optimizer_step:optimizer"] - 12 * b["lora"] / world) <= 16
    assert est.details["forward:comm_buffers"] == b["head"] + b["layer"]
    whole = b["packed"] + b["state"] + b["unquantized"] + 4 * b["lora"] + b["buffers"]
    assert abs(est.details["peak_load"] - whole) <= 4096
    assert est.details["peak_load"] > 5 * 2**30  # ~5.5 GiB on every rank, whatever the world size


def test_deepspeed_casts_a_qlora_model_back_to_bf16():
    """prepare_model_for_kbit_training's fp32 upcast (the config's default) does not survive deepspeed.initialize:
    DeepSpeed's bf16 mode casts every float parameter to bf16 (engine.py _cast_module_mixed_precision), so the
    unquantized parameters, the adapters and the hidden stream are bf16 under zero3; DDP/FSDP2 keep fp32."""
    z3 = load_config(CONFIGS / "llama7b_qlora4.yaml", ["parallel.strategy=zero3", "parallel.world_size=2"])
    ddp = load_config(CONFIGS / "llama7b_qlora4.yaml", ["parallel.strategy=ddp", "parallel.world_size=2"])
    assert z3.regime.prepare_kbit and ddp.regime.prepare_kbit
    assert (compute_dtype(z3), param_plan(z3).param_itemsize) == ("bfloat16", 2)
    assert (compute_dtype(ddp), param_plan(ddp).param_itemsize) == ("float32", 4)
    adapters = {t.itemsize for t in param_plan(z3).trainable}
    assert adapters == {2}  # peft's fp32 adapters (lora.dtype float32 in this config) cast to bf16
    z3_load = estimate("components", z3).details["peak_load"]
    # before the cast every rank holds the model as built (fp32 unquantized parameters and adapters, as under DDP)
    # and, while DeepSpeed casts, the bf16 copy of the largest of them: Llama-2-7B's 32000 x 4096 embedding
    assert z3_load == param_plan(ddp).weight_bytes + 2 * 32000 * 4096


@pytest.mark.parametrize("world", [2, 8])
def test_fsdp2_and_zero3_qlora_ordering(world):
    """The same QLoRA config under FSDP2 and ZeRO-3: both shard the packed bf16 storage and the 16-bit parameters
    and keep the quant state whole, so the weights per rank agree; DeepSpeed keeps fp32 master weights and fp32
    moments (12 B per adapter parameter) where torch's AdamW under FSDP2 keeps two bf16 moments (4 B): 3x the
    optimizer; FSDP2 all-gathers the root (embeddings + head) and up to 4 layers in backward where ZeRO-3
    gathers the head and a 4-bit layer, so ZeRO-3's gathered bytes and per-rank peak are lower on llama-3-8b.
    Both build the whole quantized model on every rank first (FSDP2 with init full, ZeRO-3 always)."""
    z3 = estimate("components", _cfg(world))
    f2 = estimate("components", _cfg(world, "parallel.strategy=fsdp2"))
    assert abs(z3.details["optimizer_step:weights"] - f2.details["optimizer_step:weights"]) <= 4096
    assert z3.details["optimizer_step:optimizer"] == pytest.approx(3 * f2.details["optimizer_step:optimizer"],
                                                                   rel=1e-3)
    assert z3.details["backward:comm_buffers"] < f2.details["backward:comm_buffers"]
    assert abs(z3.details["peak_load"] - f2.details["peak_load"]) <= 4096
    assert z3.total < f2.total


def test_zero3_qlora_notes_say_estimated_and_simulate_says_why_not():
    """components says what it is (zero3 x N, per rank); simulate answers 'not simulated' with the reason."""
    from profiler.simulate.backend import simulate

    cfg = load_config(CONFIGS / "llama7b_qlora4.yaml", ["model.arch=tiny-llama", "parallel.strategy=zero3",
                                                        "parallel.world_size=2"])
    assert estimate("components", cfg).notes.startswith("zero3 x 2, per rank")
    rec = simulate(cfg)
    assert rec["status"] != "ok" and "DeepSpeed zero3 cannot run on fake tensors" in rec["error"]
