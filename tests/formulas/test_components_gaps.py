"""The components gaps the full consistency grid found, each closed by a mechanism read in the library source:
components within 1 % of simulate on a stand-in point that was 7-32 % off before (the figure before is in each
test's docstring, from results/consistency/full_standins.*.jsonl at commit ce24bf9), and the term's own bytes.
The grid and its stand-ins are scripts/grid_consistency.py; docs/consistency.md lists the fixes.
Run: `python -m pytest tests/formulas/test_components_gaps.py`."""

from __future__ import annotations

import importlib.util

import pytest

from profiler.config import REPO_ROOT

_spec = importlib.util.spec_from_file_location("grid_consistency", REPO_ROOT / "scripts" / "grid_consistency.py")
gc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gc)
BY_ID = {gc.point_id(p): p for p in gc.full_grid()}


def _cfg(pid: str):
    return gc.config_of(BY_ID[pid])


def _agrees(pid: str, within: float = 1.0) -> dict:
    row = gc.compare(BY_ID[pid])
    assert row["pct"] is not None and abs(row["pct"]) <= within, (pid, row["pct"], row["simulate_status"])
    return row


@pytest.mark.parametrize("pid", [
    "smollm2-1.7b/lora/ddp8/s512/b4/nockpt/ac-bf16",  # +7.27 % before: one fp32 input per adapter group
    "mistral-7b/lora/fsdp2-8-mp/s8192/b1/nockpt/ac-bf16",  # +14.12 %: FSDP2 hands bf16 adapters, no cast
])
def test_lora_inputs_under_autocast(pid):
    """peft lora/layer.py Linear.forward casts the input to the fp32 adapter, then autocast casts it back to
    bf16 for lora_A, per adapter: components saved one fp32 input per group; simulate saves a bf16 copy each."""
    _agrees(pid)


def test_the_lora_input_rule():
    from profiler.formulas.activations import LayerPlan, Shape, lora_bytes, lora_input

    sh = Shape(b=1, s=8, h=16, kv=16, i=32, heads=2, head_dim=8, vocab=64, a=2, c=2)
    assert lora_input(sh) == (4, False)  # bf16 input cast to the fp32 adapter: a copy per adapter
    assert lora_input(Shape(**{**sh.__dict__, "ac": 2})) == (2, False)  # + autocast: bf16 copies, per adapter
    assert lora_input(Shape(**{**sh.__dict__, "ac": 2, "w": 2})) == (2, True)  # FSDP2 bf16 adapters: the input
    assert lora_input(Shape(**{**sh.__dict__, "a": 4, "ac": 2, "kbit": True})) == (2, False)  # qlora fp32 stream
    lp = LayerPlan(grad_in=True, lora_r=4)
    three = lora_bytes(Shape(**{**sh.__dict__, "ac": 2}), 3, 16, lp, "cuda")
    assert three == 3 * 2 * 8 * 16 + 3 * 2 * 8 * 4  # three bf16 copies + three bf16 lora_A outputs


def test_frozen_fp32_head_copy_under_autocast():
    """QLoRA (prepare_kbit upcasts the head to fp32) under bf16 autocast: the head's bf16 weight copy is saved
    for the input's gradient (not cached: frozen). -14.33 % before on this point."""
    from profiler.formulas.components import autocast_head_copy
    from profiler.formulas.params import param_plan

    pid = "qwen2.5-7b/qlora4/none/s512/b1/nockpt/ac-bf16"
    cfg = _cfg(pid)
    arch = param_plan(cfg).arch
    assert autocast_head_copy(param_plan(cfg), cfg) == 2 * arch.vocab * arch.hidden
    none = gc.config_of({**BY_ID[pid], "autocast": "none"})
    assert autocast_head_copy(param_plan(none), none) == 0
    _agrees(pid)


def test_int8_kept_input_beside_the_lora_copies():
    """8-bit qlora: MatMul8bitLt keeps its fp32 input while the adapters save bf16 copies (autocast) or their
    dropped copies. -15.03 % before on this point."""
    _agrees("qwen2.5-7b/qlora8/ddp2/s512/b1/nockpt/ac-bf16")


def test_fsdp2_root_post_backward():
    """fp32 model, param_dtype bf16, reduce_dtype fp32: at the root's post-backward the bf16 unsharded root
    gradients and the fp32 reduce-scatter input are both alive. -16.53 % before."""
    from profiler.formulas import estimate

    pid = "llama-3-8b/full/fsdp2-8-mp/s512/b1/nockpt/ac-none"
    est = estimate("components", _cfg(pid))
    assert est.details["peak_backward"] > est.details["peak_forward_start"]
    _agrees(pid, within=0.1)


def test_ddp_keeps_the_last_layer_moment():
    """Falcon-7B (math kernel: s x s fp32 scores and their gradients) at seq 8192 under DDP: the last layer's
    backward is the peak, as in one process. -32.02 % before (DDP dropped that moment)."""
    from profiler.formulas import estimate

    cfg = _cfg("falcon-7b/lora/ddp8/s8192/b1/nockpt/ac-none")
    one = estimate("components", cfg.model_copy(update={"parallel": cfg.parallel.model_copy(
        update={"strategy": "none", "world_size": 1})}))
    ddp = estimate("components", cfg)
    assert ddp.details["peak_backward"] >= one.details["peak_backward"]
    _agrees("falcon-7b/full/ddp2/s8192/b1/ckpt/ac-none", within=2.5)


def test_falcon_math_kernel_in_inference():
    """No-grad forward through SDPA's math kernel: two fp32 s x s tensors at the mask add / softmax. -7.76 %
    before."""
    from profiler.formulas.components import math_attention_inference, shape_of
    from profiler.formulas.params import param_plan

    cfg = _cfg("falcon-7b/inference/none/s512/b1/nockpt/ac-none")
    arch = param_plan(cfg).arch
    assert math_attention_inference(cfg, arch, shape_of(arch, cfg)) >= 8 * arch.heads * 512 * 512
    llama = _cfg("llama-3-8b/inference/none/s512/b1/nockpt/ac-none")
    assert math_attention_inference(llama, param_plan(llama).arch, shape_of(param_plan(llama).arch, llama)) == 0
    _agrees("falcon-7b/inference/none/s512/b1/nockpt/ac-none")


def test_gemma2_softcap_in_the_autocast_dtype():
    """Gemma-2's final soft-capping (logits / cap, tanh, * cap) runs on the head's output, which autocast makes
    bf16 even on a QLoRA model's fp32 hidden stream: the saved tanh is bf16. -18.92 % before on this point (the
    head's copy missing too), +8.6 % on gemma-2-9b/qlora4/none/s2048/b4 with the copy alone."""
    _agrees("gemma-2-9b/qlora8/none/s512/b1/nockpt/ac-bf16")
