"""`components` models the fused losses (train.loss chunked: TRL; liger: Liger's fused linear cross-entropy) within
5 % of `simulate` (its steady peak; components without its assumed CUDA overhead, as scripts/grid_consistency.py
compares) on tiny-llama and on the 2-layer stand-in of llama-3-8b, for lora, qlora4 and full under recipe trl.
Run: `python -m pytest tests/formulas/test_fused_losses.py`."""

from __future__ import annotations

import importlib.util

import pytest

from profiler.config import REPO_ROOT, load_config
from profiler.formulas import estimate
from profiler.formulas.loss_buffers import LossInputs, chunked_bytes

_spec = importlib.util.spec_from_file_location("grid_consistency", REPO_ROOT / "scripts" / "grid_consistency.py")
gc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gc)

REGIMES = {"lora": {"kind": "lora"}, "qlora4": {"kind": "qlora", "bits": 4}, "full": {"kind": "full"}}


def fused_cfg(family: str, regime: str, seq: int, loss: str, recipe: str = "trl", **train):
    arch = family if family.startswith("tiny") else gc.arch_source(family, False)
    base = {"recipe": recipe, "model": {"arch": arch}, "device": "cuda", "regime": REGIMES[regime],
            "train": {"steps": 1, "warmup_steps": 1, "seq_len": seq, "batch_size": 1, "loss": loss, **train}}
    return load_config(None, [], base=base)


def components_vs_simulate(cfg) -> tuple[int, int]:
    from profiler.simulate.backend import simulate

    est = estimate("components", cfg)
    rec = simulate(cfg, primed=True)
    assert rec["status"] == "ok", rec.get("error")
    return est.total - est.get("overhead"), rec["peaks"]["steady_peak_allocated_bytes"]


CASES = [(f, r, s) for f in ("tiny-llama", "llama-3-8b") for r in REGIMES for s in (512, 4096)]


@pytest.mark.parametrize(("family", "regime", "seq"), CASES)
def test_components_models_trl_chunked_loss(family, regime, seq):
    cfg = fused_cfg(family, regime, seq, "chunked")
    predicted, simulated = components_vs_simulate(cfg)
    assert abs(predicted - simulated) <= 0.05 * simulated, (predicted, simulated, predicted / simulated - 1)


def test_chunked_buffer_is_the_whole_vocabulary_chunk_wide():
    """trl's mm_buf is min(N, 4096) x 32768 whatever the vocabulary (chunked_logprob.py:347): a 512-token tiny model
    still holds a 511 x 32768 bf16 tile, and the tile stops growing past 4096 tokens."""
    x = dict(h=64, v=512, a=2, c=2, w=2, hidden_grad=True, head_grad=False)
    small = chunked_bytes(LossInputs(b=1, s=512, **x), cuda=True)
    assert small.forward >= 511 * 32768 * 2 > small.saved
    big, bigger = (chunked_bytes(LossInputs(b=1, s=s, **x), cuda=True) for s in (8192, 16384))
    tile = 4096 * 32768 * 2
    assert bigger.backward - big.backward < tile / 4  # per-token terms only: the tile did not grow


def test_components_no_longer_counts_full_logits_under_chunked():
    full = estimate("components", fused_cfg("llama-3-8b", "lora", 4096, "full"))
    chunked = estimate("components", fused_cfg("llama-3-8b", "lora", 4096, "chunked"))
    assert full.details["activations_logits"] >= 4 * 4096 * 128256  # the fp32 log-softmax output
    assert chunked.details["activations_logits"] < 4096 * 4096 * 2 + 4096 * 64  # the saved rows, not logits


# --- train.loss: liger (recipe trainer: TRL 1.16 refuses Liger's fused linear cross-entropy) -------------------------

LIGER_CASES = [("llama-3-8b", r, s) for r in REGIMES for s in (512, 4096)] + [("tiny-llama", "full", 512),
                                                                               ("tiny-llama", "full", 4096)]
# tiny-llama (hidden 64) with LoRA: the layers' small in-flight tensors (MLP product, residual, norm outputs) that
# components does not model weigh 6-7 % of a 3-26 MiB peak once the loss is small; the loss's own bytes are exact
TINY_LORA_GAP = [pytest.param("tiny-llama", r, s, marks=pytest.mark.xfail(
    strict=True, reason="in-layer transients of a 64-wide model, not the loss")) for r in ("lora", "qlora4")
    for s in (512, 4096)]


@pytest.mark.parametrize(("family", "regime", "seq"), LIGER_CASES + TINY_LORA_GAP)
def test_components_models_liger_loss(family, regime, seq):
    cfg = fused_cfg(family, regime, seq, "liger", recipe="trainer", gradient_checkpointing=True)
    predicted, simulated = components_vs_simulate(cfg)
    assert abs(predicted - simulated) <= 0.05 * simulated, (predicted, simulated, predicted / simulated - 1)


def test_liger_holds_no_logits_in_simulate():
    """Llama-3's 128,256-word vocabulary at 4096 tokens: the full loss holds 2 GiB of fp32 log-probabilities and
    their gradients; Liger holds one 128-token logits chunk."""
    from profiler.simulate.backend import simulate

    peaks = {}
    for loss in ("full", "liger"):
        rec = simulate(fused_cfg("llama-3-8b", "lora", 4096, loss, recipe="trainer", gradient_checkpointing=True),
                       primed=True)
        assert rec["status"] == "ok", rec.get("error")
        peaks[loss] = rec["peaks"]["steady_peak_allocated_bytes"]
    assert peaks["full"] - peaks["liger"] > 4 * 4096 * 128256  # more than the fp32 logits alone


def test_components_no_longer_counts_full_logits_under_liger():
    cfg = fused_cfg("llama-3-8b", "lora", 4096, "liger", recipe="trainer", gradient_checkpointing=True)
    details = estimate("components", cfg).details
    assert details["activations_logits"] == 4096 * 4096 * 2  # grad_input zeros_like(hidden), bf16: saved
