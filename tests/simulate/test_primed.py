"""`simulate(cfg, primed=True)` (what `fit` uses): the warm-up forward and backward are replaced by one
optimizer step on zero gradients. It is only worth having if every peak stays the same, so each config
below is simulated both ways and every phase that both have must agree to the byte, and the overall peak
too. Run: `python -m pytest tests/simulate/test_primed.py`."""

from __future__ import annotations

import pytest
from conftest import tiny

from profiler.measure.harness import primable
from profiler.simulate.backend import simulate

pytest.importorskip("bitsandbytes")

CASES = [
    ("full", ()),
    ("full", ("optimizer.name=sgd",)),
    ("full", ("optimizer.name=sgd_momentum",)),
    ("full", ("optimizer.name=adam", "train.gradient_checkpointing=true")),
    ("full", ("device=cuda", "train.autocast=bf16")),
    ("full", ("model.dtype=float32", "device=cuda")),
    ("freeze", ()),
    ("lora", ("device=cuda",)),
    ("lora", ("device=cuda", "train.gradient_checkpointing=true", "train.warmup_steps=3")),
    ("qlora4", ("device=cuda", "train.gradient_checkpointing=true")),
    ("qlora8", ("device=cuda",)),
    ("lora", ("model.arch=tiny-mixtral", "device=cuda", "regime.lora.dropout=0.0")),
    ("full", ("model.arch=tiny-qwen3-moe", "device=cuda")),
    ("lora", ("model.arch=tiny-gemma2", "model.attn_implementation=auto", "device=cuda")),
    ("full", ("model.arch=tiny-gpt2", "device=cuda")),
    ("qlora4", ("model.arch=tiny-falcon", "device=cuda")),
]


def _phases(rec: dict) -> dict[tuple, tuple]:
    return {(p["phase"], p["step"]): (p["peak_allocated_bytes"], p["breakdown"]) for p in rec["phases"]}


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=[" ".join((n, *o)) for n, o in CASES])
def test_primed_simulation_has_the_same_peaks(name, overrides):
    cfg = tiny(name, *overrides)
    plain, primed = simulate(cfg), simulate(cfg, primed=True)
    assert plain["status"] == primed["status"] == "ok", (plain["error"], primed["error"])
    assert primed.get("primed_optimizer") is True
    assert primed["peaks"]["peak_allocated_bytes"] == plain["peaks"]["peak_allocated_bytes"]
    assert primed["peaks"]["steady_peak_allocated_bytes"] == plain["peaks"]["steady_peak_allocated_bytes"]
    # fit's allowance: the allocator replay of the primed run reserves what the plain run's does (CUDA targets)
    assert primed.get("predicted_reserved_bytes") == plain.get("predicted_reserved_bytes")
    a, b = _phases(plain), _phases(primed)
    shared = set(a) & set(b)
    assert ("forward", cfg.train.warmup_steps) in shared and ("optimizer_step", 0) in shared
    assert {k: a[k][0] for k in shared} == {k: b[k][0] for k in shared}
    batch_bytes = cfg.train.batch_size * cfg.train.seq_len * 8  # int64 input ids
    for k in shared:  # the breakdowns agree, but for the input batch: after a forward it counts as activations
        ba, bb = a[k][1], b[k][1]
        assert {c: ba[c] for c in ("weights", "gradients", "optimizer")} == \
            {c: bb[c] for c in ("weights", "gradients", "optimizer")}, k
        assert sum(ba.values()) == sum(bb.values()) and abs(ba["activations"] - bb["activations"]) in (0, batch_bytes)
    assert len(b) == 5  # load, the primed optimizer step, then the measured forward, backward, step


def test_what_is_not_primed_runs_as_before():
    for cfg in (tiny("inference"), tiny("full", "train.warmup_steps=0"),
                tiny("full", "parallel.strategy=ddp", "parallel.world_size=2")):
        assert not primable(cfg)
    rec = simulate(tiny("full", "train.warmup_steps=0"), primed=True)
    assert "primed_optimizer" not in rec and [p["step"] for p in rec["phases"]] == [None, 0, 0, 0]
