"""`profiler simulate`: the harness on fake tensors. A CPU-target simulation must reproduce the real CPU run
byte for byte; bnb stand-ins must hold and allocate what real bitsandbytes layers do; CUDA attention
kernels are modelled; an untraceable op fails naming the op.
Run: `python -m pytest tests/simulate/test_simulate.py`."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONFIGS, tiny
from torch.profiler import ProfilerActivity, profile

from profiler.cli import main
from profiler.config import MODELS_DIR, REPO_ROOT, load_config
from profiler.measure.harness import run
from profiler.measure.model_stats import model_stats, weight_bytes_by_dtype
from profiler.measure.probes.tracker import TensorTracker
from profiler.schema import RunRecord
from profiler.simulate.backend import Simulation, simulate

bnb = pytest.importorskip("bitsandbytes")
fake_bnb = pytest.importorskip("profiler.simulate.fake_bnb")


def _peaks(record: dict) -> list[tuple]:
    return [(p["phase"], p["step"], p["peak_allocated_bytes"], p["allocated_bytes"])
            for p in record["phases"]]


def test_cpu_target_reproduces_real_cpu_run_exactly():
    cfg = tiny("full", "train.steps=1")
    real, fake = run(cfg), simulate(cfg)
    RunRecord.model_validate(fake)
    assert (fake["backend"], fake["status"], real["status"]) == ("fake", "ok", "ok")
    assert fake["model"] == real["model"]
    assert _peaks(fake) == _peaks(real)
    assert fake["phases"][1]["breakdown"]["weights"] == real["model"]["weight_bytes"]


@pytest.mark.parametrize("regime", ["full", "lora", "qlora4"])
@pytest.mark.parametrize("settings", [("train.gradient_checkpointing=true",), ("train.autocast=bf16",),
                                      ("train.gradient_checkpointing=true", "train.autocast=bf16")],
                         ids=["checkpointing", "autocast-bf16", "both"])
def test_cpu_target_reproduces_real_cpu_run_under_user_settings(regime, settings):
    """Byte for byte with checkpointing and bf16 autocast too (transformers builds no packed-sequence mask
    under simulate any more: profiler.simulate.backend.packed_sequence_indices)."""
    cfg = tiny(regime, "train.steps=1", *settings)
    real, fake = run(cfg), simulate(cfg)
    assert (fake["status"], real["status"]) == ("ok", "ok"), fake["error"]
    assert _peaks(fake) == _peaks(real)
    assert [p["breakdown"] for p in fake["phases"]] == [p["breakdown"] for p in real["phases"]]


def test_checkpointing_builds_no_mask_the_real_run_does_not():
    """With checkpointing there is no cache, and transformers' packed-sequence check (which it skips for fake
    tensors) would give SDPA a mask: the fused kernel must see none, as in the real run."""
    rec = simulate(tiny("full", "device=cuda", "train.gradient_checkpointing=true", "train.steps=1"))
    assert rec["status"] == "ok", rec["error"]
    assert rec["attention_kernel"] == "flash"


@pytest.mark.parametrize("regime", ["qlora4", "qlora8"])
def test_fake_qlora_weights_equal_real_bitsandbytes_model(regime):
    cfg = tiny(regime, "train.steps=1")
    real, fake = run(cfg), simulate(cfg)
    assert fake["status"] == "ok", fake["error"]
    assert fake["model"] == real["model"]  # bytes by dtype, logical/trainable/quantized params
    assert fake["model"]["quantized_params"] > 0
    # byte for byte, bnb's process-wide dynamic map (double quant, outside the model) included
    assert _peaks(fake) == _peaks(real)
    assert [p["breakdown"] for p in fake["phases"]] == [p["breakdown"] for p in real["phases"]]


def test_real_bnb_double_quant_caches_one_dynamic_map_per_process(monkeypatch):
    """The tensor the stand-ins used to miss: quantize_4bit(compress_statistics=True) calls quantize_blockwise,
    which caches create_dynamic_map().to(device) (fp32 [256], 1,024 bytes) in the module-level
    bitsandbytes.functional.name2qmap on first use; every quant state gets a copy, the cache stays."""
    monkeypatch.setattr(bnb.functional, "name2qmap", {})
    layers = []
    for _ in range(2):
        lin = bnb.nn.Linear4bit(64, 64, bias=False, compress_statistics=True, quant_type="nf4")
        lin.weight = bnb.nn.Params4bit(torch.randn(64, 64, dtype=torch.bfloat16), requires_grad=False,
                                       compress_statistics=True, quant_type="nf4", module=lin)
        layers.append(lin.to("cpu"))
        if len(layers) == 1:
            table = bnb.functional.name2qmap["dynamic"]
    assert bnb.functional.name2qmap["dynamic"] is table  # one per process, not one per layer
    assert (table.dtype, tuple(table.shape), table.device.type) == (torch.float32, (256,), "cpu")
    codes = [lin.weight.quant_state.state2.code for lin in layers]
    assert all(c.untyped_storage().data_ptr() != table.untyped_storage().data_ptr() for c in codes)


@pytest.mark.parametrize("target", ["cpu", "cuda"])
@pytest.mark.parametrize("double_quant", [True, False])
def test_standins_hold_the_dynamic_map_on_either_target(target, double_quant):
    """bnb caches the map on the quantizing device on CUDA as on CPU, so both targets hold it, once per run."""
    cfg = tiny("qlora4", f"device={target}", f"regime.double_quant={str(double_quant).lower()}")
    sim = Simulation(target)
    with sim.mode():
        model = sim.load_model(cfg).model
    table = getattr(model, fake_bnb.DYNAMIC_MAP_ATTR, None)
    if not double_quant:
        assert table is None
        return
    assert (table.dtype, tuple(table.shape)) == (torch.float32, (256,))
    codes = [m.weight.quant_state.state2.code for m in model.modules() if isinstance(m, fake_bnb.FakeLinear4bit)]
    assert codes and all(c is not table for c in codes)


def _allocator_peak(fn) -> int:
    """Peak bytes above the start of `fn`, from the CPU allocator's own events (sees inside bnb kernels)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = top = 0
    for e in events:
        live += e.nbytes()
        top = max(top, live)
    return top


def _fwd_bwd(layer, x):
    def step():
        xx = x.detach().requires_grad_(True)
        y = layer(xx)
        y.backward(torch.ones_like(y))
    return step


IN, OUT = 256, 512


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32])
def test_4bit_standin_matches_real_linear4bit(quant_type, double_quant, x_dtype):
    w = torch.randn(OUT, IN, dtype=torch.bfloat16) * 0.02
    real = bnb.nn.Linear4bit(IN, OUT, bias=False, compute_dtype=torch.bfloat16,
                             compress_statistics=double_quant, quant_type=quant_type)
    real.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=double_quant,
                                    quant_type=quant_type, module=real)
    real = real.to("cpu").train()
    stand_in = fake_bnb.FakeLinear4bit(IN, OUT, False, torch.bfloat16, quant_type, double_quant,
                                       torch.bfloat16, cuda=False)
    assert weight_bytes_by_dtype(stand_in) == weight_bytes_by_dtype(real)
    x = torch.randn(2, 64, IN, dtype=x_dtype)
    assert _allocator_peak(_fwd_bwd(stand_in, x)) == _allocator_peak(_fwd_bwd(real, x))


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32])
def test_8bit_standin_matches_real_linear8bitlt(x_dtype):
    real = bnb.nn.Linear8bitLt(IN, OUT, bias=False, has_fp16_weights=False, threshold=6.0)
    real.weight = bnb.nn.Int8Params(torch.randn(OUT, IN, dtype=torch.bfloat16) * 0.02, requires_grad=False,
                                    has_fp16_weights=False)
    real = real.to("cpu").train()
    stand_in = fake_bnb.FakeLinear8bitLt(IN, OUT, False, 6.0, torch.bfloat16, cuda=False)
    assert weight_bytes_by_dtype(stand_in) == weight_bytes_by_dtype(real)  # before the first forward
    x = torch.randn(2, 64, IN, dtype=x_dtype)
    assert _allocator_peak(_fwd_bwd(stand_in, x)) == _allocator_peak(_fwd_bwd(real, x))


def test_cuda_flash_attention_saves_out_and_logsumexp_only():
    b, h, s, d = 1, 4, 256, 16
    sim = Simulation("cuda")
    tracker = TensorTracker()
    with sim.mode(), tracker:
        q, k, v = (torch.empty(b, h, s, d, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        with tracker.phase("forward"):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        saved = tracker.phases[-1].end_bytes - tracker.phases[-1].breakdown.get("weights", 0)
    assert sim.kernels_used() == "flash"
    inputs = 3 * b * h * s * d * 2
    assert saved - inputs == b * h * s * d * 2 + b * h * s * 4  # out (bf16) + logsumexp (fp32): O(s)
    assert out.shape == (b, h, s, d)


def test_cuda_target_kernel_choice_and_config_kept():
    cfg = tiny("full", "device=cuda")
    rec = simulate(cfg)
    assert rec["status"] == "ok", rec["error"]
    assert rec["attention_kernel"] == "flash"  # bf16, no mask
    assert rec["config"]["device"] == "cuda" and rec["config_hash"] == cfg.config_hash()
    rec32 = simulate(tiny("full", "device=cuda", "model.dtype=float32"))
    assert rec32["attention_kernel"] == "math"  # flash needs fp16/bf16; mem-efficient takes no GQA (2 k/v heads)
    mha32 = simulate(tiny("full", "device=cuda", "model.dtype=float32", "model.arch=tiny-olmo2"))
    assert mha32["attention_kernel"] == "efficient"  # as many k/v heads as q heads
    eager = simulate(tiny("full", "device=cuda", "model.attn_implementation=eager"))
    assert eager["attention_kernel"] == "eager"
    assert rec["peaks"]["peak_allocated_bytes"] < eager["peaks"]["peak_allocated_bytes"]  # no s x s probs


def test_cuda_fused_kernels_need_equal_heads_unless_gqa():
    """torch's sdp_utils: flash and mem-efficient need as many k/v heads as q heads; flash takes fewer only
    with enable_gqa. Falcon-7B passes 1 k/v head for 71 q heads without it: the math kernel (s x s saved)."""
    from profiler.simulate.backend import cuda_sdpa_kernel

    def t(h):
        return torch.empty(1, h, 64, 64, dtype=torch.bfloat16, device="meta")

    mask = torch.empty(1, 1, 64, 64, dtype=torch.bool, device="meta")
    assert cuda_sdpa_kernel(t(8), t(8), t(8), None, True) == "flash"
    assert cuda_sdpa_kernel(t(8), t(2), t(2), None, True, enable_gqa=True) == "flash"
    assert cuda_sdpa_kernel(t(8), t(2), t(2), None, True) == "math"
    assert cuda_sdpa_kernel(t(8), t(8), t(8), mask, False) == "efficient"
    assert cuda_sdpa_kernel(t(8), t(1), t(1), mask, False) == "math"  # Falcon-7B: MQA, explicit mask
    sim = Simulation("cuda")
    with sim.mode():
        q = torch.empty(1, 71, 64, 64, dtype=torch.bfloat16, requires_grad=True)
        kv = torch.empty(1, 1, 64, 64, dtype=torch.bfloat16, requires_grad=True)
        torch.nn.functional.scaled_dot_product_attention(q, kv, kv, attn_mask=torch.ones(1, 1, 64, 64).bool())
    assert sim.kernels_used() == "math"


def test_untraceable_op_fails_naming_the_op(monkeypatch):
    from transformers.models.llama import modeling_llama

    native = modeling_llama.LlamaMLP.forward

    def data_dependent(self, x):
        x[x > 0].sum()  # boolean indexing: output shape depends on values
        return native(self, x)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", data_dependent)
    rec = simulate(tiny("full"))
    assert rec["status"] == "error"
    want = "UntraceableOp: op aten.nonzero.default cannot run on fake tensors"
    assert rec["error"].startswith(want), rec["error"]


def test_cli_appends_a_schema_valid_simulated_line(tmp_path):
    out = tmp_path / "sim.jsonl"
    rc = main(["simulate", str(CONFIGS / "tiny_lora.yaml"), "train.steps=1", "--output", str(out), "--quiet"])
    assert rc == 0
    (line,) = out.read_text().splitlines()
    rec = RunRecord.model_validate(json.loads(line))
    assert rec.backend == "fake" and rec.status == "ok" and rec.phases[-1].breakdown is not None


def test_llama7b_seq4096_simulates_in_seconds():
    cfg = load_config(CONFIGS / "llama7b_full_seq4096.yaml")
    rec = simulate(cfg)
    assert rec["status"] == "ok", rec["error"]
    params = rec["model"]["total_params"]
    assert params == 6_738_415_616
    assert rec["model"]["weight_bytes_by_dtype"]["bfloat16"] == 2 * params
    assert rec["attention_kernel"] == "flash"
    # steady step: weights + grads + two AdamW moments (bf16) at least, and less than +1 weight copy more
    # than that plus activations (foreach AdamW keeps one temporary per parameter during the step)
    assert rec["peaks"]["steady_peak_allocated_bytes"] >= 4 * 2 * params


def test_model_stats_counts_fake_stand_ins_as_quantized():
    layer = fake_bnb.FakeLinear4bit(64, 64, False, torch.bfloat16, "nf4", True, torch.bfloat16, cuda=True)
    stats = model_stats(layer, "x")
    assert stats["quantized_params"] == 64 * 64
    assert stats["weight_bytes_by_dtype"]["uint8"] == 64 * 64 // 2 + 64  # packed weight + 8-bit absmax


def test_simulate_vs_measured_script_pairs_by_config_hash(tmp_path):
    """The script behind results/simulate_vs_cuda.md, on a CPU pair: a CPU simulation is exact."""
    import importlib.util

    from profiler.measure.harness import run as measured_run

    spec = importlib.util.spec_from_file_location("svc", REPO_ROOT / "scripts" / "simulate_vs_cuda.py")
    svc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(svc)
    cfg = load_config(REPO_ROOT / "configs" / "tiny_full.yaml", ["train.steps=1"])
    real, fake = measured_run(cfg), simulate(cfg)
    other = simulate(load_config(REPO_ROOT / "configs" / "tiny_full.yaml", ["train.steps=1", "train.seq_len=32"]))
    rows = svc.pair_rows([real], [fake, other])
    assert len(rows) == 1
    assert rows[0]["error_pct"] == 0.0
    assert rows[0]["measured"] == real["peaks"]["peak_allocated_bytes"] > 0
    assert "| tiny-llama full adamw b2 s64 | cpu | ok |" in svc.markdown(rows)


def test_generate_is_simulated_with_the_same_tokens_and_peak():
    """Inference with new_tokens: the fake decode loop stands in for HF generate (which calls .item())."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from profiler.simulate.backend import greedy_generate

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(MODELS_DIR / "tiny-llama.json"))
    x = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        ours = greedy_generate(model, x, max_new_tokens=6)
        theirs = model.generate(input_ids=x, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)
    cfg = tiny("inference", "train.steps=1")
    real, fake = run(cfg), simulate(cfg)
    assert fake["status"] == "ok", fake["error"]
    gen = [[p for p in r["phases"] if p["phase"] == "generate"][-1] for r in (real, fake)]
    assert gen[1]["peak_allocated_bytes"] == pytest.approx(gen[0]["peak_allocated_bytes"], rel=0.02)


def test_simulate_runs_one_measured_step_but_keeps_the_config():
    cfg = tiny("lora", "train.steps=3")
    fake = simulate(cfg)
    assert fake["simulated_steps"] == cfg.train.warmup_steps + 1
    assert sorted({p["step"] for p in fake["phases"] if p["step"] is not None}) == [0, 1]
    assert fake["config"]["train"]["steps"] == 3 and fake["config_hash"] == cfg.config_hash()


def test_cuda_target_dropout_saves_a_one_byte_mask():
    """CUDA's fused dropout keeps a bool mask for backward; the CPU path keeps a noise tensor of the
    input's dtype. The LoRA dropout of a cuda-target simulation must take the CUDA form."""
    from profiler.measure.probes.tracker import TensorTracker
    from profiler.simulate.backend import cuda_dropout

    with torch._subclasses.fake_tensor.FakeTensorMode(), TensorTracker() as tr:
        x = torch.empty(1000, 1000, requires_grad=True)
        with tr.phase("forward"):
            y = cuda_dropout(x, 0.1, True)
    saved = tr.phases[-1].end_breakdown["activations"] + tr.phases[-1].end_breakdown["temporaries"]
    assert y.shape == x.shape
    assert saved == 1000 * 1000 * (4 + 4 + 1)  # x and the output (fp32) + a bool mask, no fp32 noise


@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw_8bit"])
def test_bitsandbytes_8bit_adamw_step_runs_on_fake_tensors(name):
    """The real bnb 8-bit step (its fake kernel); its quantization map gets a placeholder value. State: two uint8
    moments + fp32 absmax per 256-block for tensors of 4096+ elements, two fp32 moments below that (bnb
    min_8bit_size), plus the signed and unsigned maps (fp32 [256] each, shared by all parameters)."""
    from profiler.measure.harness import paged_state_bytes

    cfg = tiny("full", "device=cuda", "train.steps=1", f"optimizer.name={name}")
    rec = simulate(cfg)
    assert rec["status"] == "ok", rec["error"]
    sim = Simulation("cuda")
    with sim.mode():
        params = list(sim.load_model(cfg).model.parameters())
    opt = [p for p in rec["phases"] if p["phase"] == "optimizer_step"][-1]
    assert opt["breakdown"]["optimizer"] == paged_state_bytes(params) + 2 * 256 * 4
