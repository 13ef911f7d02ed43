"""The allocator settings parser, the replay of a recorded sequence, the snapshot reader and scripts/replay_snapshot.py,
and the replay wired into simulate (predicted_reserved_bytes / predicted_nvml_bytes, allocator.conf honoured)."""

from __future__ import annotations

import importlib.util
import json
import pickle

import pytest
import torch

from profiler.allocator.conf import AllocatorConf, conf_from, parse_conf
from profiler.allocator.context import cuda_context
from profiler.allocator.replay import cublas_workspace_bytes, replay
from profiler.allocator.snapshot import read_trace
from profiler.config import REPO_ROOT, ConfigError

MIB = 2**20


def _script():
    spec = importlib.util.spec_from_file_location("replay_snapshot", REPO_ROOT / "scripts" / "replay_snapshot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---- settings --------------------------------------------------------------------------------------------------
def test_settings_parse_as_torch_parses_them():
    c = parse_conf("max_split_size_mb:128, expandable_segments:True,garbage_collection_threshold:0.6,"
                   "roundup_power2_divisions:[256:1,512:2,>:8],pinned_use_background_threads:True")
    assert c.max_split_size == 128 * MIB and c.expandable_segments and c.garbage_collection_threshold == 0.6
    # boundaries in MiB index the 1 MiB .. 64 GiB intervals by log2: below 256 MiB the first value (1) applies
    assert c.divisions(100 * MIB) == 1 and c.divisions(256 * MIB) == 1 and c.divisions(600 * MIB) == 2
    assert c.divisions(1100 * MIB) == 8 and c.divisions(2**40) == 8
    assert parse_conf("roundup_power2_divisions:4").divisions(MIB) == 4


@pytest.mark.parametrize("text, words", [
    ("max_split_size_mb:10", "max_split_size_mb 10 is too small"),
    ("garbage_collection_threshold:1.5", "garbage_collection_threshold 1.5 is out of range"),
    ("expandable_segments:yes", "expandable_segments 'yes' is not a boolean"),
    ("roundup_power2_divisions:3", "roundup_power2_divisions 3 is not a power of 2"),
    ("backend:cudaMallocAsync", "allowed: native"),
    ("max_splt_size_mb:100", "unknown key 'max_splt_size_mb'"),
    ("expandable_segments", "is not key:value"),
])
def test_bad_settings_are_one_line_naming_the_key(text, words):
    with pytest.raises(ConfigError, match="allocator.conf: ") as exc:
        parse_conf(text)
    assert words in str(exc.value) and "\n" not in str(exc.value) and "allowed" in str(exc.value)


def test_the_config_key_wins_then_pytorch_alloc_conf_then_the_cuda_one():
    env = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:64", "PYTORCH_ALLOC_CONF": "expandable_segments:True"}
    assert conf_from(None, env).expandable_segments and conf_from(None, env).source == "PYTORCH_ALLOC_CONF"
    assert conf_from(None, {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:64"}).max_split_size == 64 * MIB
    assert conf_from("garbage_collection_threshold:0.5", env).source == "allocator.conf"
    assert conf_from(None, {}) == AllocatorConf()


def test_the_cuda_context_row_says_whether_it_is_published():
    ctx = cuda_context("sm90", "12.8")
    assert ctx.bytes == 512 * MIB and ctx.kind == "assumption"  # no published training figure: the assumption
    bare = cuda_context("sm86", "12.8", use="bare")
    assert bare.bytes == 256 * MIB and bare.kind == "published" and "InvokeAI" in bare.source


def test_cublas_workspace_follows_the_architecture_and_the_environment():
    assert cublas_workspace_bytes("sm90", {}) == 32 * MIB
    assert cublas_workspace_bytes("sm80", {}) == 8 * MIB + 128 * 1024
    assert cublas_workspace_bytes(None, {"CUBLAS_WORKSPACE_CONFIG": ":4096:2:16:8"}) == 8 * MIB + 128 * 1024


# ---- replay ----------------------------------------------------------------------------------------------------
def test_a_resize_allocates_the_new_size_before_freeing_the_old():
    # 6 MiB grows to 16 MiB: both live at once (the 20 MiB segment has 14 MiB left: a 16 MiB segment), then the
    # 6 MiB block is freed; freeing first would have fitted 16 MiB in the 20 MiB segment
    res = replay([(1, 6 * MIB), (1, 16 * MIB)])
    assert res.peak_reserved == 36 * MIB and res.end_reserved == 36 * MIB
    assert replay([(1, 6 * MIB), (1, 0)]).end_reserved == 20 * MIB  # resize to 0 frees (FSDP2's resize_(0))
    assert replay([(1, 0), (1, -1)]).peak_reserved == 0  # zero-byte storages allocate nothing


def test_each_phase_peak_is_its_own_and_the_workspace_arrives_with_the_first_forward():
    events = [(1, 30 * MIB), (2, 100), (1, -1), (3, 3 * MIB)]
    marks = [(0, 1, "load", None), (2, 0, "load", None), (2, 1, "forward", 0), (4, 0, "forward", 0)]
    res = replay(events, marks, workspace_bytes=32 * MIB)
    load, fwd = res.phases
    assert (load.name, load.peak_reserved) == ("load", 32 * MIB)  # 30 MiB segment + 2 MiB small segment
    # forward: the 30 MiB block is free again; the 32 MiB workspace does not fit it: a 32 MiB segment, then the
    # 3 MiB request splits the cached 30 MiB block (the peak is reserved, cached memory included)
    assert fwd.peak_reserved == 64 * MIB and res.peak_reserved == 64 * MIB


def test_past_a_capacity_the_replay_reports_the_oom_and_its_phase():
    marks = [(0, 1, "forward", 3)]
    res = replay([(1, 30 * MIB), (2, 30 * MIB)], marks, capacity=50 * MIB)
    assert res.oom is not None and "phase 'forward' (step 3)" in res.oom


# ---- snapshots -------------------------------------------------------------------------------------------------
def _entry(action, addr, size, stream=0):
    return {"action": action, "addr": addr, "size": size, "stream": stream, "frames": []}


def synthetic_snapshot() -> dict:
    """A trace as torch's allocator would write it for: 1000 B, 3 MiB, 30 MiB allocations, the 3 MiB one freed
    (requested, completed), then 5 MiB (reusing the 20 MiB segment). Reserved peaks at 2 + 20 + 30 = 52 MiB."""
    a, b, c = 0x7F0000000000, 0x7F0000200000, 0x7F0001600000
    trace = [_entry("segment_alloc", a, 2 * MIB), _entry("alloc", a, 1000),
             _entry("segment_alloc", b, 20 * MIB), _entry("alloc", b, 3 * MIB),
             _entry("segment_alloc", c, 30 * MIB), _entry("alloc", c, 30 * MIB),
             _entry("free_requested", b, 3 * MIB), _entry("free_completed", b, 3 * MIB),
             _entry("alloc", b, 5 * MIB)]
    return {"segments": [], "device_traces": [trace]}


def test_a_snapshot_trace_is_read_as_allocs_and_completed_frees():
    t = read_trace(synthetic_snapshot())
    assert t.allocs == 4 and len(t.events) == 5 and t.unknown_frees == 0
    assert t.real_peak_reserved == 52 * MIB and t.events[3] == (0x7F0000200000, -1)
    with pytest.raises(ValueError, match="allowed: 0..0"):
        read_trace(synthetic_snapshot(), device=1)


def test_replay_snapshot_script_compares_with_the_real_reserved(tmp_path, capsys):
    mod = _script()
    path = tmp_path / "snap.pickle"
    path.write_bytes(pickle.dumps(synthetic_snapshot()))
    assert mod.main([str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["replayed_peak_reserved_bytes"] == out["real_peak_reserved_bytes"] == 52 * MIB
    assert mod.main([str(path), "--reserved", str(60 * MIB)]) == 1  # 52 vs 60 MiB: not within 1 %
    assert "NOT within 1 %" in capsys.readouterr().out
    bad = tmp_path / "bad.pickle"
    bad.write_bytes(pickle.dumps({"segments": []}))
    assert mod.main([str(bad)]) == 2
    assert "no device_traces" in capsys.readouterr().err
    assert mod.main([str(path), "--conf", "max_split_size_mb:1"]) == 2


# ---- wired into the tracker and simulate -----------------------------------------------------------------------
def test_the_tracker_records_allocs_frees_and_phase_marks_only_when_asked():
    from profiler.measure.probes.tracker import TensorTracker

    tr = TensorTracker()
    tr.alloc_log = []
    with tr.phase("forward", 0):
        x = torch.empty(1000)
        del x
    assert [n for _, n in tr.alloc_log] == [4000, -1]
    assert tr.alloc_marks == [(0, 1, "forward", 0), (2, 0, "forward", 0)]
    quiet = TensorTracker()
    with quiet.phase("forward", 0):
        torch.empty(10)
    assert quiet.alloc_log is None and quiet.alloc_marks == []


def test_simulate_of_a_cuda_config_predicts_reserved_and_nvidia_smi(monkeypatch):
    from conftest import tiny

    from profiler.schema import RunRecord
    from profiler.simulate.backend import simulate

    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    rec = simulate(tiny("full", "device=cuda", "train.batch_size=8", "train.seq_len=128"))
    RunRecord.model_validate(rec)
    rp = rec["allocator_replay"]
    assert rec["predicted_reserved_bytes"] >= rp["peak_allocated_bytes"] >= rec["peaks"]["peak_allocated_bytes"]
    assert rec["predicted_nvml_bytes"] == rec["predicted_reserved_bytes"] + rp["context_bytes"]
    steps = [p for p in rec["phases"] if p["step"] is not None]
    assert max(p["predicted_reserved_bytes"] for p in steps) <= rec["predicted_reserved_bytes"]
    assert rp["conf"] == "(torch defaults) [defaults]" and rp["cublas_workspace_bytes"] == 8 * MIB + 128 * 1024
    import io

    from rich.console import Console

    from profiler.summary import print_summary

    buf = io.StringIO()
    print_summary(rec, None, Console(file=buf, width=200))
    text = buf.getvalue()
    assert "reserved (replay)" in text and "predicted: allocated" in text and "(caching-allocator replay" in text
    assert "nvidia-smi" in text and "CUDA context 512.00 MiB, an assumption" in text
    cpu = simulate(tiny("full"))  # a CPU target has no caching allocator
    assert "predicted_reserved_bytes" not in cpu
    # the environment's settings and the config key are both honoured (expandable: 2 / 20 MiB pages)
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    env = simulate(tiny("full", "device=cuda", "train.batch_size=8", "train.seq_len=128"))
    assert env["allocator_replay"]["conf"] == "expandable_segments:True [PYTORCH_CUDA_ALLOC_CONF]"
    key = simulate(tiny("full", "device=cuda", "train.batch_size=8", "train.seq_len=128",
                        "allocator.conf=expandable_segments:True"))
    assert key["predicted_reserved_bytes"] == env["predicted_reserved_bytes"]
    assert key["allocator_replay"]["conf"] == "expandable_segments:True [allocator.conf]"


def test_settings_from_the_environment_that_cannot_be_replayed_leave_a_warning_not_a_failure(monkeypatch):
    from conftest import tiny

    from profiler.simulate.backend import simulate

    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "backend:cudaMallocAsync")
    rec = simulate(tiny("lora", "device=cuda"))
    assert rec["status"] == "ok" and "predicted_reserved_bytes" not in rec
    assert any("no allocator replay" in w and "cudaMallocAsync" in w for w in rec["warnings"])


def test_bad_allocator_conf_is_exit_2_before_the_run(capsys, tmp_path):
    from profiler.cli import main

    out = tmp_path / "sim.jsonl"
    rc = main(["simulate", str(REPO_ROOT / "configs" / "tiny_full.yaml"), "device=cuda",
               "allocator.conf=max_split_size_mb:5", "--output", str(out)])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "allocator.conf: max_split_size_mb 5 is too small" in err and "Traceback" not in err
