"""Data-parallel runs for real: `profiler run` with world_size 2 launches two ranks through torchrun
(gloo on the CPU), rank 0 writes one line with both ranks; `simulate` (fake process group, rank 0) gives
the same per-rank peak for every phase. Plus the tracker's comm_buffers bookkeeping."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONFIGS, gpu

from profiler.categories import Category
from profiler.cli import main
from profiler.config import load_config
from profiler.measure.loading import load_model
from profiler.measure.probes.tracker import TensorTracker
from profiler.measure.regimes import apply_regime
from profiler.schema import RunRecord

TINY = str(CONFIGS / "tiny_full.yaml")


def _line(path) -> dict:
    lines = path.read_text().splitlines()
    assert len(lines) == 1  # rank 0 writes; the other rank writes nothing
    return RunRecord.model_validate(json.loads(lines[0])).model_dump()


@pytest.mark.parametrize("strategy", ["fsdp2", "ddp"])
def test_world_2_runs_for_real_and_simulate_matches_every_phase(strategy, tmp_path):
    ov = [f"parallel.strategy={strategy}", "parallel.world_size=2", "train.steps=1"]
    real_out, sim_out = tmp_path / "real.jsonl", tmp_path / "sim.jsonl"
    assert main(["run", TINY, *ov, "--output", str(real_out), "--quiet"]) == 0
    assert main(["simulate", TINY, *ov, "--output", str(sim_out), "--quiet"]) == 0
    real, sim = _line(real_out), _line(sim_out)
    assert real["status"] == sim["status"] == "ok" and real["backend"] == "cpu" and sim["backend"] == "fake"
    assert [r["rank"] for r in real["ranks"]] == [0, 1] and len(sim["ranks"]) == 1
    assert real["max_rank_peak_allocated_bytes"] == max(r["peak_allocated_bytes"] for r in real["ranks"])
    simulated = {(p["phase"], p["step"]): p["peak_allocated_bytes"] for p in sim["ranks"][0]["phases"]}
    assert len(simulated) == 7  # load + 2 steps x 3 phases
    # min over the ranks: gloo's worker thread, under load, now and then keeps one rank's reduce-scatter buffer
    # alive into its next phase (seen on rank 1's optimizer step, +131,136 B on a shared 2-core machine)
    per_rank = [{(p["phase"], p["step"]): p["peak_allocated_bytes"] for p in r["phases"]} for r in real["ranks"]]
    for key, want in simulated.items():
        measured = min(r[key] for r in per_rank)
        assert abs(measured - want) <= 0.02 * measured, (key, [r[key] for r in per_rank], want)
    forward = next(p for p in real["phases"] if p["phase"] == "forward" and p["step"] == 1)
    assert forward["breakdown"]["comm_buffers"] > 0
    if strategy == "fsdp2":  # meta-device init (parallel.init auto): each rank materialises only its shards
        _assert_load_is_the_local_shards(load_config(TINY, ov), real, sim)


def _load_bytes(cfg) -> tuple[int, int]:
    """(this rank's shards + what is not sharded, the whole model's parameters), from the meta-device model:
    dim 0 of each parameter split over the ranks (padded up, as FSDP2 does), buffers (rotary frequencies) and
    the batch replicated."""
    with torch.device("meta"):
        model = apply_regime(load_model(cfg).model, cfg)
    n = cfg.parallel.world_size
    params = list(model.parameters())
    shards = sum(-(-p.shape[0] // n) * (p.numel() // p.shape[0]) * p.element_size() for p in params)
    batch = 8 * cfg.train.batch_size * cfg.train.seq_len  # int64 token ids
    leftovers = sum(b.numel() * b.element_size() for b in model.buffers()) + batch
    return shards + leftovers, sum(p.numel() * p.element_size() for p in params)


def _assert_load_is_the_local_shards(cfg, real: dict, sim: dict) -> None:
    want, whole = _load_bytes(cfg)
    loads = [next(p["peak_allocated_bytes"] for p in r["phases"] if p["phase"] == "load")
             for r in real["ranks"] + sim["ranks"]]
    assert loads == [want] * 3, (loads, want)  # rank 0, rank 1, simulated rank 0: byte for byte
    assert want < 0.6 * whole


def test_fsdp2_lora_on_a_meta_model_runs_for_real_and_simulate_matches(tmp_path):
    """peft adds its adapters on the meta model, their trainable flags survive fully_shard, and to_empty
    gives each rank its shards of base weights and adapters: the real gloo run equals simulate, load included."""
    ov = ["parallel.strategy=fsdp2", "parallel.world_size=2", "train.steps=1", "regime.kind=lora"]
    real_out, sim_out = tmp_path / "real.jsonl", tmp_path / "sim.jsonl"
    assert main(["run", TINY, *ov, "--output", str(real_out), "--quiet"]) == 0
    assert main(["simulate", TINY, *ov, "--output", str(sim_out), "--quiet"]) == 0
    real, sim = _line(real_out), _line(sim_out)
    assert real["status"] == sim["status"] == "ok"
    assert 0 < real["model"]["trainable_params"] < real["model"]["total_params"] / 5  # the adapters only
    # every phase of the ranks equals simulate; min over the ranks, as gloo's worker thread, under load, now and
    # then keeps a reduce-scatter buffer of one rank alive into its next phase (seen once on rank 1's step)
    per_rank = [[p["peak_allocated_bytes"] for p in r["phases"]] for r in real["ranks"]]
    measured = [min(ps) for ps in zip(*per_rank, strict=True)]
    assert measured == [p["peak_allocated_bytes"] for p in sim["ranks"][0]["phases"]]
    _assert_load_is_the_local_shards(load_config(TINY, ov), real, sim)


TINY_QLORA = str(CONFIGS / "tiny_qlora4.yaml")
# the way users run FSDP-QLoRA (PEFT's docs, TRL + accelerate): TRL's defaults (bf16 autocast, checkpointing, no
# prepare_model_for_kbit_training, bf16 adapters), accelerate's bf16 FSDP2 mixed-precision policy and
# bnb_4bit_quant_storage=bfloat16, both filled; "plain": the 2023 loop (prepare_kbit: fp32 norms and adapters)
FSDP_QLORA = {"trl": ["recipe=trl", "train.autocast=bf16", "train.gradient_checkpointing=true"], "plain": []}


@pytest.mark.parametrize("recipe", list(FSDP_QLORA))
def test_fsdp2_qlora_runs_for_real_and_simulate_matches_byte_for_byte(recipe, tmp_path):
    """Issue 20 item 4: bitsandbytes 4-bit weights stored as bf16 are sharded by fully_shard like any parameter
    (each rank keeps the whole quant state), bitsandbytes recovers the quant state from the layer in forward, and
    the real gloo run at world 2 equals simulate's stand-ins for every phase of both ranks, load included."""
    ov = ["parallel.strategy=fsdp2", "parallel.world_size=2", "train.steps=1", *FSDP_QLORA[recipe]]
    cfg = load_config(TINY_QLORA, ov)
    assert cfg.regime.quant_storage == "bfloat16" and "regime.quant_storage" in cfg.recipe_defaults
    assert cfg.parallel_init == "full"  # accelerate loads the quantized model whole on every rank, then shards
    if recipe == "trl":
        assert (cfg.parallel.param_dtype, cfg.parallel.reduce_dtype) == ("bfloat16", "bfloat16")
    real_out, sim_out = tmp_path / "real.jsonl", tmp_path / "sim.jsonl"
    assert main(["run", TINY_QLORA, *ov, "--output", str(real_out), "--quiet"]) == 0
    assert main(["simulate", TINY_QLORA, *ov, "--output", str(sim_out), "--quiet"]) == 0
    real, sim = _line(real_out), _line(sim_out)
    assert real["status"] == sim["status"] == "ok" and [r["rank"] for r in real["ranks"]] == [0, 1]
    assert real["model"] == sim["model"]
    quantized = real["model"]["quantized_params"]
    assert quantized == 2 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 128)  # 2 layers: q, o; k, v (2 kv heads); mlp
    if recipe == "plain":  # every other float parameter is fp32 here: the bf16 bytes are this rank's packed half
        assert real["model"]["weight_bytes_by_dtype"]["bfloat16"] == quantized // 2 // 2
    per_rank = [[p["peak_allocated_bytes"] for p in r["phases"]] for r in real["ranks"]]
    measured = [min(ps) for ps in zip(*per_rank, strict=True)]  # min: see the LoRA test above
    assert measured == [p["peak_allocated_bytes"] for p in sim["ranks"][0]["phases"]]
    assert [p["breakdown"] for p in real["phases"]] == [p["breakdown"] for p in sim["phases"]]


def test_fsdp2_shards_and_ddp_replicates(tmp_path):
    """Rank-0 categories at world 2: FSDP2 keeps half the weights and optimizer state, DDP all of them
    plus gradient buckets of exactly the gradients' size."""
    recs = {}
    for s in ("fsdp2", "ddp"):
        out = tmp_path / f"{s}.jsonl"
        assert main(["simulate", TINY, f"parallel.strategy={s}", "parallel.world_size=2", "train.steps=1",
                     "--output", str(out), "--quiet"]) == 0
        recs[s] = _line(out)
    step = {s: next(p for p in r["phases"] if p["phase"] == "optimizer_step" and p["step"] == 1)["breakdown"]
            for s, r in recs.items()}
    params = recs["ddp"]["model"]["total_params"]
    assert step["ddp"]["gradients"] == 2 * params and step["ddp"]["comm_buffers"] == 2 * params  # bf16
    assert step["fsdp2"]["gradients"] == params  # every dim 0 of tiny-llama divides by 2: no padding
    assert "comm_buffers" not in step["fsdp2"]  # nothing unsharded once the step ran
    assert step["fsdp2"]["optimizer"] * 2 - step["ddp"]["optimizer"] < 1024  # (+ fp32 step counters)


def test_tracker_scope_resize_and_comm_rank():
    with TensorTracker() as tr:
        with tr.scope(Category.COMM_BUFFERS):
            buf = torch.empty(1000)  # 4000 bytes, made inside a collective
        assert tr.breakdown()["comm_buffers"] == 4000
        tr.classify(buf, Category.WEIGHTS)  # registered on a module as an unsharded param: still comm
        assert tr.breakdown()["comm_buffers"] == 4000 and tr.breakdown()["weights"] == 0
        buf.untyped_storage().resize_(0)  # FSDP2 frees unsharded params in place: no op is dispatched
        assert tr.live_bytes == 4000
        tr.resized(buf)
        assert tr.live_bytes == 0 and tr.breakdown().get("comm_buffers", 0) == 0
        buf.untyped_storage().resize_(4000)
        tr.resized(buf, Category.COMM_BUFFERS)
        assert tr.breakdown()["comm_buffers"] == 4000
        grad = torch.empty(10)
        with tr.scope(Category.COMM_BUFFERS):
            out = grad.add_(1)  # noqa: F841
        tr.classify(grad, Category.GRADIENTS)  # a reduce-scatter output that became .grad: a gradient
        assert tr.breakdown()["gradients"] == 40
    assert "comm_buffers" not in TensorTracker().breakdown()  # one-process breakdowns keep five keys


def test_deepspeed_zero2_world_2_runs_on_cpu_with_gloo(tmp_path):
    """DeepSpeed 0.19.8 picks its CPU accelerator and gloo; ZeRO-2 at world 2 runs for real. Its default
    reduce bucket (5e8 elements, fp32 here) is allocated in the first backward and dominates a tiny model."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "ds.jsonl"
    assert main(["run", TINY, "parallel.strategy=zero2", "parallel.world_size=2", "model.dtype=float32",
                 "train.steps=1", "--output", str(out), "--quiet"]) == 0
    rec = _line(out)
    assert rec["status"] == "ok" and [r["rank"] for r in rec["ranks"]] == [0, 1]
    assert rec["max_rank_peak_allocated_bytes"] >= 500_000_000 * 4


@gpu
@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_deepspeed_zero_world_1_on_gpu(strategy, tmp_path):
    """GPU sibling of the CPU ZeRO-2 test: ZeRO-2 and ZeRO-3 at world_size 1 (NCCL) on one GPU."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "ds.jsonl"
    assert main(["run", TINY, f"parallel.strategy={strategy}", "device=cuda", "train.steps=1",
                 "--output", str(out), "--quiet"]) == 0
    rec = _line(out)
    assert rec["status"] == "ok" and rec["backend"] == "cuda" and len(rec["ranks"]) == 1


FAIL_ON_RANK_1 = '''
import os
if os.environ.get("RANK") == "1":  # rank 1's second optimizer step raises; rank 0 goes on into step 2's
    import torch.optim             # FSDP all-gather, where it waits for a peer that never comes

    real, calls = torch.optim.AdamW.step, []

    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure on rank 1")
        return real(self, *args, **kwargs)

    torch.optim.AdamW.step = step
'''


def test_a_rank_that_fails_mid_run_ends_the_job_and_its_error_is_the_line(tmp_path):
    """Issue 23, item 29: the failed rank must not enter `all_gather_object` while its peer is blocked in an
    FSDP collective (an NCCL hang). It leaves its record and exits; torchrun stops the peer; the launcher
    writes the line (status error, naming the rank), with one line on stderr and no torchrun report."""
    import os
    import subprocess
    import sys

    from profiler.config import REPO_ROOT

    (tmp_path / "sitecustomize.py").write_text(FAIL_ON_RANK_1)
    out = tmp_path / "out.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO_ROOT)]))
    res = subprocess.run([sys.executable, "-m", "profiler", "run", TINY, "parallel.strategy=fsdp2",
                          "parallel.world_size=2", "train.steps=3", "--output", str(out), "--quiet"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-3000:]
    rec = _line(out)
    assert rec["status"] == "error" and rec["error"] == "rank 1: RuntimeError: injected failure on rank 1"
    assert [r["rank"] for r in rec["ranks"]] == [1]
    assert res.stderr.strip() == f"error: run ended with status error: {rec['error']}"
