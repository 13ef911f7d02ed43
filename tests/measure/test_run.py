"""`profiler run` on the tiny model: every regime x {adamw, sgd}, exact parameter and weight-byte counts,
OOM as a result. The independent counts below come from the architecture's numbers, not from the code
under test."""

from __future__ import annotations

import json

import pytest
from conftest import CONFIGS, tiny

from profiler.cli import main
from profiler.config import MODELS_DIR
from profiler.measure.harness import run
from profiler.schema import RunRecord

ARCH = json.loads((MODELS_DIR / "tiny-llama.json").read_text())
H, FF, L, V = ARCH["hidden_size"], ARCH["intermediate_size"], ARCH["num_hidden_layers"], ARCH["vocab_size"]
KV = ARCH["num_key_value_heads"] * (H // ARCH["num_attention_heads"])
# (in, out) of every linear layer in one decoder layer: q, k, v, o, gate, up, down
LINEARS = [(H, H), (H, KV), (H, KV), (H, H), (H, FF), (H, FF), (FF, H)]
LAYER_NUMEL = sum(i * o for i, o in LINEARS) + 2 * H  # + input/post-attention RMSNorm weights
TOTAL = 2 * V * H + L * LAYER_NUMEL + H  # untied embedding + lm_head, layers, final norm
REGIMES = ["full", "freeze", "lora", "qlora8", "qlora4", "inference"]


def expected_trainable(regime: str, cfg) -> int:
    r = cfg.regime.lora.r
    return {
        "full": TOTAL,
        "freeze": cfg.regime.freeze.trainable_layers * LAYER_NUMEL,
        "lora": L * sum(r * (i + o) for i, o in LINEARS),
        "qlora8": L * sum(r * (i + o) for i, o in LINEARS),
        "qlora4": L * sum(r * (i + o) for i, o in LINEARS),
        "inference": 0,
    }[regime]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Each regime x optimizer once, through the CLI, into one file (the expensive part of this module)."""
    out = tmp_path_factory.mktemp("runs") / "cpu.jsonl"
    for regime in REGIMES:
        for opt in (["adamw", "sgd"] if regime != "inference" else ["adamw"]):
            rc = main(["run", str(CONFIGS / f"tiny_{regime}.yaml"), "train.steps=2", f"optimizer.name={opt}",
                       "--output", str(out), "--quiet"])
            assert rc == 0, (regime, opt)
    lines = out.read_text().splitlines()
    return [json.loads(x) for x in lines]


def _find(records, regime, opt="adamw"):
    for r in records:
        rg = r["config"]["regime"]
        label = f"qlora{rg['bits']}" if rg["kind"] == "qlora" else rg["kind"]
        if label == regime and r["config"]["optimizer"]["name"] == opt:
            return r
    raise AssertionError(f"no record for {regime}/{opt}")


def test_one_schema_valid_line_per_run(records):
    assert len(records) == 11
    for r in records:
        RunRecord.model_validate(r)
        assert r["status"] == "ok", r["error"]
        assert r["backend"] == "cpu"
        assert r["env"]["device_name"] == "cpu" and r["env"]["torch"]


@pytest.mark.parametrize("regime", REGIMES)
def test_trainable_parameter_counts_are_exact(records, regime):
    rec = _find(records, regime)
    cfg = tiny(regime)
    assert rec["model"]["trainable_params"] == expected_trainable(regime, cfg)
    adapters = expected_trainable("lora", cfg) if regime in ("lora", "qlora4", "qlora8") else 0
    assert rec["model"]["total_params"] == TOTAL + adapters


@pytest.mark.parametrize("regime", REGIMES)
def test_phases_cover_every_step(records, regime):
    rec = _find(records, regime)
    names = [(p["phase"], p["step"]) for p in rec["phases"]]
    train = ["forward", "backward", "optimizer_step"]
    per_step = ["forward", "generate"] if regime == "inference" else train
    assert names == [("load", None)] + [(ph, s) for s in range(3) for ph in per_step]
    assert [p["warmup"] for p in rec["phases"] if p["step"] is not None][0] is True
    for p in rec["phases"]:
        assert p["peak_allocated_bytes"] >= p["allocated_bytes"] > 0
    assert rec["peaks"]["peak_allocated_bytes"] == max(p["peak_allocated_bytes"] for p in rec["phases"])
    assert rec["peaks"]["peak_allocated_bytes"] >= rec["model"]["weight_bytes"]


def test_quantized_weight_bytes_match_bitsandbytes_packing(records):
    numel = L * sum(i * o for i, o in LINEARS)
    out_rows = L * sum(o for _, o in LINEARS)
    q4 = _find(records, "qlora4")["model"]
    assert q4["quantized_params"] == numel
    # 4-bit: two weights per byte, plus double-quantized absmax: one uint8 per 64-weight block
    assert q4["weight_bytes_by_dtype"]["uint8"] == numel // 2 + numel // 64
    q8 = _find(records, "qlora8")["model"]
    assert q8["quantized_params"] == numel
    assert q8["weight_bytes_by_dtype"]["int8"] == numel  # LLM.int8: one byte per weight (+ fp32 row scales)
    # unquantized: embeddings, lm_head, norms; prepare_kbit casts them to fp32
    assert q8["weight_bytes_by_dtype"]["float32"] >= (2 * V * H + (2 * L + 1) * H) * 4 + out_rows * 4


def test_sgd_has_no_optimizer_state_and_adamw_does(records):
    for regime in ("full", "lora"):
        sgd = _find(records, regime, "sgd")
        adamw = _find(records, regime, "adamw")
        last = max(p["step"] for p in adamw["phases"] if p["step"] is not None)
        end = {p["phase"]: p for p in adamw["phases"] if p["step"] == last}
        end_sgd = {p["phase"]: p for p in sgd["phases"] if p["step"] == last}
        # after the step, AdamW keeps two moments per trainable param; SGD keeps nothing
        extra = end["optimizer_step"]["allocated_bytes"] - end_sgd["optimizer_step"]["allocated_bytes"]
        itemsize = 2 if regime == "full" else 4  # bf16 params in full; peft keeps LoRA adapters in fp32
        assert extra >= 2 * adamw["model"]["trainable_params"] * itemsize


def test_oom_under_cpu_budget_is_a_result(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    rc = main(["run", str(CONFIGS / "tiny_full.yaml"), "max_memory=400KiB", "--output", str(out)])
    assert rc == 0
    (rec,) = [json.loads(x) for x in out.read_text().splitlines()]
    RunRecord.model_validate(rec)
    assert rec["status"] == "oom"
    assert rec["oom_phase"] in ("forward", "backward", "optimizer_step")
    assert 0 < rec["peaks"]["peak_allocated_bytes"] <= 400 * 1024
    assert rec["peaks"]["steady_peak_allocated_bytes"] is None  # no steady state in a failed run
    assert "oom" in capsys.readouterr().out


def test_other_failures_are_recorded_with_exit_1(tmp_path, monkeypatch):
    import profiler.measure.harness as harness

    def broken(*a, **k):
        raise RuntimeError("optimizer exploded")

    monkeypatch.setattr(harness, "make_optimizer", broken)
    out = tmp_path / "o.jsonl"
    assert main(["run", str(CONFIGS / "tiny_lora.yaml"), "--output", str(out), "--quiet"]) == 1
    (rec,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert rec["status"] == "error" and "optimizer exploded" in rec["error"]


def test_gradient_checkpointing_lowers_the_forward_peak():
    plain = run(tiny("full", "train.seq_len=256"))
    ckpt = run(tiny("full", "train.seq_len=256", "train.gradient_checkpointing=true"))
    fwd = [p for p in plain["phases"] if p["phase"] == "forward"][-1]
    fwd_ck = [p for p in ckpt["phases"] if p["phase"] == "forward"][-1]
    assert fwd_ck["allocated_bytes"] < fwd["allocated_bytes"]


def test_larger_batch_needs_more_memory():
    small = run(tiny("lora", "train.batch_size=1"))
    big = run(tiny("lora", "train.batch_size=4"))
    assert big["peaks"]["steady_peak_allocated_bytes"] > small["peaks"]["steady_peak_allocated_bytes"]


def test_local_checkpoint_path_loads_real_weights(tmp_path):
    """Users with a real checkpoint point model.path at it; the quantized path goes through from_pretrained too."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(MODELS_DIR / "tiny-llama.json"))
    model.save_pretrained(tmp_path / "ckpt")
    for regime in ("lora", "qlora4"):
        rec = run(tiny(regime, "model.arch=null", f"model.path={tmp_path / 'ckpt'}"))
        assert rec["status"] == "ok", rec["error"]
        assert rec["model"]["trainable_params"] == expected_trainable(regime, tiny(regime))
    assert rec["model"]["quantized_params"] == L * sum(i * o for i, o in LINEARS)


def test_paged_optimizer_is_refused_when_its_state_would_not_fit():
    """CPU sibling of the CUDA-only guard: the same check with a synthetic free-memory figure."""
    import torch

    from profiler.measure.harness import PagedStateTooLarge, check_paged_state_fits, paged_state_bytes

    params = [torch.zeros(1000, 1000), torch.zeros(100)]
    assert paged_state_bytes(params) == 2 * 1_000_000 + 8 * -(-1_000_000 // 256) + 8 * 100
    check_paged_state_fits(params, free=10_000_000)
    with pytest.raises(PagedStateTooLarge, match="refused"):
        check_paged_state_fits(params, free=2_000_000)


@pytest.mark.filterwarnings("ignore")  # pytest's record of a library warning would keep its frame alive
def test_run_releases_the_model():
    """A GPU test process runs many configs: nothing of a finished run may stay alive (the next run's
    reserved peak would include it)."""
    import gc

    from transformers import PreTrainedModel

    run(tiny("lora"))
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, PreTrainedModel)]
