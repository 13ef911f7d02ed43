"""simulate with a parallel strategy: FSDP2 at world 8 holds 1/8 of the state; ZeRO says it is not simulated."""

from __future__ import annotations

import json

from conftest import CONFIGS

from profiler.cli import main
from profiler.schema import RunRecord

TINY = str(CONFIGS / "tiny_full.yaml")


def test_zero_is_not_simulated_and_the_line_says_why(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert main(["simulate", TINY, "parallel.strategy=zero3", "parallel.world_size=4", "--output", str(out),
                 "--quiet"]) == 1
    rec = RunRecord.model_validate(json.loads(out.read_text())).model_dump()
    assert rec["status"] == "error" and rec["error"].startswith("NotSimulated: DeepSpeed zero3")
    assert "profiler estimate" in rec["error"] and "NotSimulated" in capsys.readouterr().err


def test_fsdp2_world_8_rank_holds_an_eighth_of_the_optimizer_state(tmp_path):
    outs = {}
    for ov in ([], ["parallel.strategy=fsdp2", "parallel.world_size=8"]):
        out = tmp_path / f"{len(ov)}.jsonl"
        assert main(["simulate", TINY, *ov, "train.steps=1", "--output", str(out), "--quiet"]) == 0
        outs[len(ov)] = json.loads(out.read_text())
    one, eight = (next(p["breakdown"] for p in outs[k]["phases"] if p["phase"] == "optimizer_step" and p["step"] == 1)
                  for k in (0, 2))
    # two bf16 moments per parameter (sharded), plus a 4-byte fp32 `step` per tensor (CPU; not sharded);
    # tiny-llama's dim 0 sizes (64, 32, 128, 512) all divide by 8, so no shard is padded
    params = outs[0]["model"]["total_params"]
    steps = one["optimizer"] - 4 * params
    assert steps == 4 * 21  # embed, head, final norm + 2 layers x (7 linears + 2 norms)
    assert eight["optimizer"] == 4 * params // 8 + steps
    assert eight["weights"] * 8 - one["weights"] < 8 * 64  # the fp32 rotary buffers are replicated
    assert outs[2]["ranks"][0]["rank"] == 0 and outs[2]["max_rank_peak_allocated_bytes"] > 0


def test_fsdp2_meta_init_loads_the_shards_not_the_model(tmp_path):
    """A larger stand-in (Qwen2.5-0.5B, tied embeddings, 494M params) at world 8: with parallel.init auto (meta)
    the load peak is rank 0's shards plus one tied shard materialised twice by to_empty for a moment; with
    parallel.init full every rank first holds the whole model. The steps do not depend on how the model was built."""
    ov = ["model.arch=qwen2.5-0.5b", "parallel.strategy=fsdp2", "parallel.world_size=8", "train.steps=1",
          "train.batch_size=1", "train.seq_len=32"]
    recs = {}
    for init in ("auto", "full"):
        out = tmp_path / f"{init}.jsonl"
        assert main(["simulate", TINY, *ov, f"parallel.init={init}", "--output", str(out), "--quiet"]) == 0
        recs[init] = RunRecord.model_validate(json.loads(out.read_text())).model_dump()
    whole = 2 * recs["auto"]["model"]["total_params"]  # bf16, the tied head counted once
    embed = 2 * 151_936 * 896  # vocab x hidden
    load = {k: r["phases"][0] for k, r in recs.items()}
    assert load["auto"]["phase"] == "load" and load["auto"]["allocated_bytes"] <= whole // 8 + 4096  # + buffers
    assert load["auto"]["peak_allocated_bytes"] <= whole // 8 + embed // 8 + 4096
    assert load["full"]["peak_allocated_bytes"] >= whole
    assert [p["peak_allocated_bytes"] for p in recs["auto"]["phases"][1:]] == [
        p["peak_allocated_bytes"] for p in recs["full"]["phases"][1:]]
