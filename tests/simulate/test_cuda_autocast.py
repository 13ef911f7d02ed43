"""CUDA autocast on the fake CPU tensors of a `device: cuda` simulation (profiler.simulate.cuda_autocast):
the op lists are torch's CUDA ones, each policy casts as autocast_mode.h does, SDPA picks its kernel on the
cast inputs, and QLoRA under bf16 autocast gets flash attention, as on a GPU.
Run: `python -m pytest tests/simulate/test_cuda_autocast.py`."""

from __future__ import annotations

import json

import torch

from profiler.config import MODELS_DIR, REPO_ROOT, load_config
from profiler.simulate.backend import Simulation, simulate
from profiler.simulate.cuda_autocast import cpu_autocast_ops, cuda_autocast_ops

BF16, F32 = torch.bfloat16, torch.float32


def test_op_lists_are_the_autocast_cuda_kernels_of_the_installed_torch():
    """The data file names every op torch registers an AutocastCUDA kernel for, and no other (a CPU build
    registers them too); it names the torch version and commit it was read from."""
    data = cuda_autocast_ops()
    listed = {*data["lower_precision_fp"], *data["fp32"], *data["fp32_set_opt_dtype"], *data["promote"],
              *data["banned"], *data["fp32_append_dtype"]}
    c = torch._C
    registered = {n.removeprefix("aten::") for n in c._dispatch_get_all_op_names()
                  if c._dispatch_has_kernel_for_dispatch_key(n, "AutocastCUDA")}
    assert listed == registered
    assert torch.__version__.startswith(data["torch_version"]) and data["commit"] in data["source"]
    assert "scaled_dot_product_attention" in data["lower_precision_fp"]
    assert {"softmax.int", "log_softmax.int", "sum"} <= set(data["fp32_set_opt_dtype"])


def _under_cuda_autocast(fn):
    sim = Simulation("cuda")
    with sim.mode(), torch.autocast("cpu", dtype=BF16):
        return fn()


def test_each_policy_casts_as_cuda_autocast():
    def body():
        x16 = torch.empty(4, 8, dtype=BF16)
        x32 = torch.empty(4, 8, dtype=F32)
        w = torch.nn.Parameter(torch.empty(8, 8))
        return {
            "linear": torch.nn.functional.linear(x32, w).dtype,  # lower precision
            "einsum": torch.einsum("ij,jk->ik", x32, w).dtype,
            "softmax": torch.softmax(x16, -1).dtype,  # fp32_set_opt_dtype: fp32 on CUDA, bf16 on CPU
            "log_softmax": torch.log_softmax(x16, -1).dtype,
            "sum": x16.sum().dtype,
            "sum_dtype": x16.sum(dtype=BF16).dtype,  # an explicit dtype is respected
            "rsqrt": torch.rsqrt(x16).dtype,  # fp32
            "pow": x16.pow(2).dtype,
            "exp": x16.exp().dtype,
            "addcmul": torch.addcmul(x16, x16, x32).dtype,  # promote: the widest
            "add": (x16 + x16).dtype,  # on no list: as given
            "norm": torch.norm(x16, 2).dtype,  # fp32_append_dtype
        }

    got = _under_cuda_autocast(body)
    assert got == {"linear": BF16, "einsum": BF16, "softmax": F32, "log_softmax": F32, "sum": F32,
                   "sum_dtype": BF16, "rsqrt": F32, "pow": F32, "exp": F32, "addcmul": F32, "add": BF16,
                   "norm": F32}


def test_cpu_lists_are_back_after_the_simulation():
    """Leaving the mode restores torch's AutocastCPU kernels: CPU autocast leaves softmax and exp as given."""
    _under_cuda_autocast(lambda: None)
    x16, x32 = torch.randn(4, 8, dtype=BF16), torch.randn(8, 8)
    with torch.autocast("cpu", dtype=BF16):
        assert torch.softmax(x16, -1).dtype == BF16
        assert torch.exp(x16).dtype == BF16
        assert torch.mm(x32, x32).dtype == BF16
    assert "mm" in cpu_autocast_ops()


def _casts_of(out: torch.Tensor) -> set[int]:
    """The ToCopyBackward nodes (autocast's casts) in the graph behind `out`."""
    seen, todo = set(), [out.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None:
            continue
        if type(fn).__name__ == "ToCopyBackward0":
            seen.add(id(fn))
        todo.extend(f for f, _ in fn.next_functions)
    return seen


def test_a_parameter_is_cast_once_per_autocast_region():
    """cached_cast: an fp32 leaf that requires grad is cast once, its copy kept until autocast is left."""
    sim = Simulation("cuda")
    with sim.mode():
        w = torch.nn.Parameter(torch.empty(8, 8))
        x = torch.empty(4, 8)
        with torch.autocast("cpu", dtype=BF16):
            a = torch.nn.functional.linear(x, w)
            b = torch.nn.functional.linear(x, w)
            cast_a, cast_b = _casts_of(a), _casts_of(b)
        assert len(cast_a) == 1 and cast_a == cast_b  # both linears took the same cast of w (x needs none)
        with torch.autocast("cpu", dtype=BF16):
            c = torch.nn.functional.linear(x, w)
        assert len(_casts_of(c)) == 1 and _casts_of(c) != cast_a  # a new region casts again


def test_sdpa_kernel_is_chosen_on_the_cast_inputs():
    """fp32 q/k/v (QLoRA with prepare_kbit) under bf16 autocast reach the kernel as bf16: flash, as on CUDA."""
    sim = Simulation("cuda")
    with sim.mode():
        q, k, v = (torch.empty(1, 8, 128, 64, requires_grad=True) for _ in range(3))
        with torch.autocast("cpu", dtype=BF16):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        plain = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert out.dtype == BF16 and plain.dtype == F32
    assert sim.sdpa.used == {"flash": 1, "efficient": 1}


def _llama3_8b_cut(tmp_path, layers: int = 4) -> str:
    """Llama-3-8B with fewer layers (what attention does is per layer; a full model costs ~10x the CPU)."""
    arch = json.loads((MODELS_DIR / "llama-3-8b.json").read_text())
    arch["num_hidden_layers"] = layers
    path = tmp_path / f"llama-3-8b-{layers}l.json"
    path.write_text(json.dumps(arch))
    return str(path)


def _saves_less(none: dict, bf16: dict, layers: int = 4, heads: int = 32, seq: int = 2048) -> None:
    """The peak falls by more than half of what the math kernel keeps per layer (s x s fp32 probabilities per
    head, which flash does not keep): autocast's own bf16 copies give back less than the other half."""
    p0, p1 = none["peaks"]["peak_allocated_bytes"], bf16["peaks"]["peak_allocated_bytes"]
    assert p0 - p1 > layers * heads * seq * seq * 4 / 2, (p0 / 2**30, p1 / 2**30)


def _qlora(model_arch: str, *overrides: str):
    return load_config(REPO_ROOT / "configs" / "llama7b_qlora4.yaml",
                       [f"model.arch={model_arch}", "train.seq_len=2048", "train.steps=1", *overrides])


def test_llama3_8b_qlora4_bf16_autocast_runs_flash_and_needs_less(tmp_path, monkeypatch):
    """The headline case, both ways users run QLoRA with bf16=True (autocast):
    - HF Trainer: prepare_model_for_kbit_training (norms fp32, so q/k/v fp32). Without autocast the fp32 q/k/v
      of a grouped-query model take the math kernel (s x s fp32 probabilities saved); with CUDA's autocast SDPA
      gets bf16 inputs and flash runs;
    - TRL SFTTrainer: no prepare_model_for_kbit_training, trainable parameters cast to bf16 (sft_trainer.py: "the
      PEFT adapter weights are converted to bf16"): flash too, and under the HF run without autocast.
    Whole Llama-3-8B on torch 2.13: 54.05 GiB without autocast, 32.65 GiB with (README); here cut to 4 layers."""
    from profiler.measure import regimes

    arch = _llama3_8b_cut(tmp_path)
    none = simulate(_qlora(arch), primed=True)
    bf16 = simulate(_qlora(arch, "train.autocast=bf16"), primed=True)
    native = regimes._apply_lora

    def bf16_adapters(model, cfg):
        model = native(model, cfg)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(BF16)
        return model

    monkeypatch.setattr(regimes, "_apply_lora", bf16_adapters)
    trl = simulate(_qlora(arch, "regime.prepare_kbit=false", "train.autocast=bf16"), primed=True)
    recs = (none, bf16, trl)
    assert all(r["status"] == "ok" for r in recs), [r["error"] for r in recs]
    assert none["attention_kernel"] == "math"
    assert bf16["attention_kernel"] in ("flash", "cudnn") and trl["attention_kernel"] in ("flash", "cudnn")
    _saves_less(none, bf16)
    _saves_less(none, trl)
    opt = [p for p in trl["phases"] if p["phase"] == "optimizer_step"][-1]
    assert opt["breakdown"]["optimizer"] > 0  # bf16 adapters still train
