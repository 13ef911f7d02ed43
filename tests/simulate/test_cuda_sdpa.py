"""The SDPA kernel per GPU architecture (profiler.simulate.cuda_sdpa: torch 2.13's CUDA dispatch rules), what
cuDNN attention allocates, the per-layer-kind record, the torch-version warning, and `fit --gpu` setting the
architecture. Run: `python -m pytest tests/simulate/test_cuda_sdpa.py`."""

from __future__ import annotations

import argparse

import pytest
import torch
from conftest import tiny

from profiler.measure.probes.tracker import TensorTracker
from profiler.simulate.backend import Simulation, simulate
from profiler.simulate.cuda_sdpa import cuda_sdpa_kernel


def _t(h, d=128, dtype=torch.bfloat16, s=256):
    return torch.empty(1, h, s, d, dtype=dtype, device="meta")


MASK = torch.empty(1, 1, 256, 256, dtype=torch.bool, device="meta")


@pytest.mark.parametrize(("arch", "q", "kv", "mask", "gqa", "grad", "want"), [
    ("sm80", 32, 8, None, True, True, "flash"),  # Llama-3, no mask: transformers passes enable_gqa
    ("sm90", 32, 8, None, True, True, "cudnn"),  # cuDNN first on Hopper (cuDNN > 9.15)
    ("sm100", 32, 8, None, True, True, "cudnn"),
    ("sm89", 32, 8, None, True, True, "flash"),  # Ada: no cuDNN preference
    ("sm80", 32, 32, MASK, False, True, "efficient"),  # a mask: flash refuses, mem-efficient takes it
    ("sm90", 32, 32, MASK, False, True, "cudnn"),  # cuDNN takes masks
    ("sm80", 32, 8, MASK, False, True, "math"),  # fewer k/v heads without enable_gqa: only math
    ("sm75", 32, 32, None, False, True, "math"),  # Turing: no flash, no bf16 mem-efficient
    ("sm120", 32, 8, None, True, True, "flash"),
])
def test_kernel_per_architecture(arch, q, kv, mask, gqa, grad, want):
    assert cuda_sdpa_kernel(_t(q), _t(kv), _t(kv), mask, mask is None, gqa, arch, requires_grad=grad) == want


def test_arch_specific_limits():
    """Training with a head dim in (192, 224] on sm86/sm89 is not flash (sdp_utils.cpp: its backward would fail
    there), but is on sm80; fp16 on sm75 runs mem-efficient; past cuDNN's head-dim limit (128; 256 needs
    cuDNN > 9.22) Hopper runs flash."""
    q = _t(8, d=208)
    assert cuda_sdpa_kernel(q, q, q, None, True, arch="sm80", requires_grad=True) == "flash"
    assert cuda_sdpa_kernel(q, q, q, None, True, arch="sm86", requires_grad=True) == "efficient"
    assert cuda_sdpa_kernel(q, q, q, None, True, arch="sm86", requires_grad=False) == "flash"
    assert cuda_sdpa_kernel(q, q, q, None, True, arch="sm90", requires_grad=True) == "flash"
    h = _t(8, dtype=torch.float16)
    assert cuda_sdpa_kernel(h, h, h, None, True, arch="sm75", requires_grad=True) == "efficient"
    f = _t(8, dtype=torch.float32)
    assert cuda_sdpa_kernel(f, f, f, None, True, arch="sm90", requires_grad=True) == "efficient"


def test_cudnn_saves_out_and_logsumexp_and_takes_gqa():
    """cuDNN (the aten op's own meta kernel): out in q's layout + logsumexp (b, h, s, 1) fp32 saved with q, k, v;
    k/v keep their fewer heads (no repeat), and backward gives grads of their shapes."""
    b, h, hk, s, d = 1, 8, 2, 256, 64
    sim = Simulation("cuda", "sm90")
    tracker = TensorTracker()
    with sim.mode(), tracker:
        q = torch.empty(b, h, s, d, dtype=torch.bfloat16, requires_grad=True)
        k, v = (torch.empty(b, hk, s, d, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        with tracker.phase("forward"):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        saved = tracker.phases[-1].end_bytes - (b * h * s * d + 2 * b * hk * s * d) * 2  # less q, k, v
        out.sum().backward()
    assert sim.kernels_used() == "cudnn"
    assert out.shape == (b, h, s, d) and k.grad.shape == (b, hk, s, d)
    # out (bf16) + logsumexp (fp32) + the philox seed and offset (two int64 scalars): O(s), no k/v repeat
    assert saved == b * h * s * d * 2 + b * h * s * 4 + 2 * 8


def test_record_names_kernels_per_layer_kind_and_rules():
    """Gemma-3 mixes sliding and full attention layers: on sm80 the sliding ones get a mask (mem-efficient),
    the full ones none (flash); on sm90 cuDNN takes both. seq 192 > the tiny model's 128-token window (shorter
    sequences need no sliding mask)."""
    base = ("full", "device=cuda", "model.arch=tiny-gemma3", "train.steps=1", "train.seq_len=192")
    a = simulate(tiny(*base, "gpu_arch=sm80"))
    h = simulate(tiny(*base, "gpu_arch=sm90"))
    assert a["status"] == h["status"] == "ok", (a["error"], h["error"])
    assert a["attention_kernels"] == {"sliding_attention": "efficient", "full_attention": "flash"}
    assert h["attention_kernels"] == {"sliding_attention": "cudnn", "full_attention": "cudnn"}
    assert a["sdpa_rules"] == {"gpu_arch": "sm80", "torch": "2.13", "assumed": False}
    assert h["attention_kernel"] == "cudnn"  # the old field: kernels used, most used first


def test_other_torch_version_warns_once(monkeypatch, capsys):
    from profiler.simulate import cuda_sdpa

    monkeypatch.setattr(torch, "__version__", "2.14.0")
    monkeypatch.setattr(cuda_sdpa, "_warned", False)
    rec = simulate(tiny("full", "device=cuda", "train.steps=1"))
    assert any("read from torch 2.13; this is torch 2.14.0" in w for w in rec["warnings"])
    simulate(tiny("full", "device=cuda", "train.steps=1"))
    err = capsys.readouterr().err
    assert err.count("SDPA kernel rules were read from torch 2.13") == 1


def test_fit_sets_gpu_arch_from_the_preset():
    from profiler.commands.fit import build_config
    from profiler.predict.gpus import gpu_by_name

    args = argparse.Namespace(config=None, regime="lora", seq=512, batch="1", optimizer=None, checkpointing=False,
                              overrides=[])
    assert gpu_by_name("h100").arch == "sm90" and gpu_by_name("rtx4090").arch == "sm89"
    assert build_config(args, "tiny-llama", gpu_by_name("h100")).gpu_arch == "sm90"
    assert build_config(args, "tiny-llama", gpu_by_name("a40")).gpu_arch == "auto"  # cc not cited: sm80 rules
    args.overrides = ["gpu_arch=sm80"]
    assert build_config(args, "tiny-llama", gpu_by_name("h100")).gpu_arch == "sm80"  # an override wins
