"""`train.activation_offloading`: MirrorOffload makes TRL's pack decisions, and a simulated CUDA run keeps the
offloaded activations off the GPU (the head's inputs and the forward stash stay).
Run: `python -m pytest tests/measure/test_act_offload.py`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import gpu, tiny

from profiler.config import ConfigError, RunConfig
from profiler.measure.act_offload import MirrorOffload, offload_context
from profiler.simulate.backend import simulate

MODELS = Path(__file__).resolve().parents[2] / "profiler" / "models"


def _tiny_llama() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    hf = LlamaConfig(**json.loads((MODELS / "tiny-llama.json").read_text()))
    return AutoModelForCausalLM.from_config(hf, dtype=torch.float32, attn_implementation="sdpa")


def _trl_manager(model, streams: bool):
    """TRL's own manager with the CPU as its accelerator (it needs one to be built); pinned memory needs CUDA."""
    ao = pytest.importorskip("trl.models.activation_offloading")
    with mock.patch.object(torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("cpu")):
        return ao.get_act_offloading_ctx_manager(model, use_pin_memory=False, use_streams=streams)


def _decisions(mgr, nbytes) -> dict:
    return {tid: (v[1], nbytes(v[0]) if v[1] else None) for tid, v in mgr.tracker.items()}


@pytest.mark.parametrize("streams", [True, False], ids=["streams", "one-stream"])
def test_mirror_packs_as_trl_on_a_tiny_llama_forward(streams, monkeypatch):
    """After the forward, the same saved-tensor ids are offloaded with the same byte counts, the same ids kept
    (parameters, small tensors, the head's input, storages still in the stash), and the same forward stash."""
    # OffloadActivations.__enter__ empties the accelerator's cache once bitsandbytes is imported (earlier tests in
    # the same process import it); torch.cpu, the accelerator TRL is given here, has no cache to empty
    monkeypatch.setattr(torch.cpu, "empty_cache", lambda: None, raising=False)
    model = _tiny_llama()
    twin = copy.deepcopy(model)
    ids = torch.randint(0, 100, (2, 32))
    trl = _trl_manager(model, streams)
    ours = offload_context(twin, enabled=True, fake=True)
    ours.use_streams = streams
    results, alive = [], []
    for mgr, m in ((trl, model), (ours, twin)):
        # every tensor the hooks see stays alive until the comparison: TRL keys its dedup map by address, so a freed
        # storage's address reused by a later tensor would make TRL keep that tensor, depending on the heap's state
        # (seen in a long pytest process); with no address reused both managers dedup only true repeats
        pack = mgr.pack_hook
        mgr.pack_hook = lambda t, pack=pack: (alive.append(t), pack(t))[1]
        mgr.__enter__()
        try:
            m(input_ids=ids, labels=ids)
            results.append(mgr)
        finally:
            torch.autograd.graph.saved_tensors_hooks.__exit__(mgr, None, None, None)
    theirs = _decisions(results[0], lambda t: t.untyped_storage().nbytes())
    mine = _decisions(results[1], lambda meta: meta[4])
    assert mine.keys() == theirs.keys()
    # TRL keys its dedup map by address: an address a freed storage had (the non-contiguous original of an
    # offloaded copy) may match a new tensor, which TRL then keeps. Those ids, and only in that direction, differ.
    for tid in [t for t in mine if mine[t] != theirs[t]]:
        assert streams and mine[tid][0] and not theirs[tid][0], tid
        kept = results[0].tracker[tid][0]
        others = [v[0] for i, v in results[0].tracker.items() if i < tid and not v[1]]  # packed before it
        assert all(o.untyped_storage().data_ptr() != kept.untyped_storage().data_ptr() for o in others), tid
        del mine[tid], theirs[tid]
    assert mine == theirs
    assert any(off for off, _ in mine.values()) and any(not off for off, _ in mine.values())
    if streams:
        assert list(results[1].fwd_stash) == list(results[0].fwd_stash)
        assert 0 < len(results[1].fwd_stash) <= 5


def test_head_input_stays_saved_on_the_device():
    """lm_head runs under TRL's NoOpManager: its saved input (the final hidden states) never reaches the pack hook
    (autograd keeps it on the device), while the same model without the head opt-out offloads it."""
    ids = torch.randint(0, 100, (2, 32))

    def packed_head_input(opt_out: bool) -> tuple[bool, MirrorOffload]:
        model = _tiny_llama()
        seen, packed = {}, []
        model.lm_head.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
        mgr = offload_context(model, enabled=True, fake=True) if opt_out else MirrorOffload(model)
        pack = mgr.pack_hook
        mgr.pack_hook = lambda t: (packed.append(t.untyped_storage()), pack(t))[1]
        with mgr:
            loss = model(input_ids=ids, labels=ids).loss
            hit = any(st is seen["x"].untyped_storage() for st in packed)  # storage objects are preserved
            loss.backward()
        return hit, mgr

    hit, mgr = packed_head_input(True)
    assert not hit
    assert packed_head_input(False)[0]
    assert mgr.host_bytes == 0 and mgr.host_peak > 0  # everything came back


def _breakdown(record: dict, phase: str) -> dict:
    return next(p for p in record["phases"] if p["phase"] == phase and p["step"] == 1)


def _stand_in(tmp_path: Path) -> str:
    hf = json.loads((MODELS / "llama-3-8b.json").read_text())
    hf["num_hidden_layers"] = 2  # scripts/grid_consistency.py arch_source's stand-in
    path = tmp_path / "llama-3-8b-2l.json"
    path.write_text(json.dumps(hf))
    return str(path)


@pytest.mark.parametrize("which", ["tiny-llama", "llama-3-8b-2l"])
def test_simulate_moves_offloaded_activations_off_the_gpu(which, tmp_path):
    """CUDA simulation: the forward-end activations drop by at least half of what went to the host less what the
    stash and deduplicated storages keep, and never below the head's input; backward brings every byte back."""
    if which == "tiny-llama":
        base = tiny("full", "device=cuda", "train.steps=1").model_dump(mode="json")
    else:
        base = {"model": {"arch": _stand_in(tmp_path)}, "device": "cuda", "regime": {"kind": "lora"},
                "train": {"batch_size": 1, "seq_len": 256, "steps": 1}}
    recs = []
    for on in (False, True):
        data = copy.deepcopy(base)
        data["train"]["activation_offloading"] = on
        recs.append(simulate(RunConfig.model_validate(data)))
    off, on = recs
    assert (off["status"], on["status"]) == ("ok", "ok"), (off["error"], on["error"])
    host = on["activation_offload"]["host_peak_bytes"]
    act_off = _breakdown(off, "forward")["breakdown"]["activations"]
    act_on = _breakdown(on, "forward")["breakdown"]["activations"]
    cfg = RunConfig.model_validate(base)
    hidden = json.loads(Path(cfg.model.arch if which != "tiny-llama" else MODELS / "tiny-llama.json").read_text())
    head_input = cfg.train.batch_size * cfg.train.seq_len * hidden["hidden_size"] * 2  # bf16
    assert host > 0
    assert act_on >= head_input
    assert act_off - act_on >= 0.3 * host, (act_off, act_on, host)
    assert _breakdown(on, "forward")["peak_allocated_bytes"] < _breakdown(off, "forward")["peak_allocated_bytes"]
    assert "activation_offload" not in off


@gpu
@pytest.mark.gpu
def test_real_cuda_run_enters_trls_manager_and_lowers_the_forward_activations():
    """GPU sibling of test_simulate_moves_offloaded_activations_off_the_gpu: TRL's own OffloadActivations (streams,
    pinned memory) in a real CUDA run; the forward-end activations drop, never below the head's input."""
    from profiler.measure.harness import run

    recs = [run(tiny("full", "device=cuda", "train.steps=1", f"train.activation_offloading={on}"))
            for on in ("false", "true")]
    assert [r["status"] for r in recs] == ["ok", "ok"], [r["error"] for r in recs]
    off, on = (_breakdown(r, "forward")["breakdown"]["activations"] for r in recs)
    assert on < off
    assert on >= 2 * 64 * json.loads((MODELS / "tiny-llama.json").read_text())["hidden_size"] * 2


@pytest.mark.parametrize("override, field", [
    ("regime.kind=inference", "regime.kind inference"), ("device=cpu", "device cpu")])
def test_refused_where_trl_does_not_offload(override, field):
    with pytest.raises(ConfigError, match=f"train.activation_offloading: .*allowed with {field}: false"):
        tiny("full", "device=cuda", "train.activation_offloading=true", override)


def test_default_is_off_and_keeps_the_hash():
    plain = tiny("full", "device=cuda")
    assert plain.train.activation_offloading is False
    assert tiny("full", "device=cuda", "train.activation_offloading=false").config_hash() == plain.config_hash()
    assert tiny("full", "device=cuda", "train.activation_offloading=true").config_hash() != plain.config_hash()
    assert not isinstance(offload_context(torch.nn.Linear(2, 2), False, True), MirrorOffload)
