"""The random-weight checkpoint cache: keyed by content and library versions, atomic, safe under concurrent
runs, and isolated from the user's ~/.cache during tests."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, tiny

from profiler.config import MODELS_DIR, load_config
from profiler.measure import loading
from profiler.measure.loading import (
    _checkpoint_key,
    cache_dir,
    prepare_source,
    random_checkpoint,
    resolve_hf_config,
)


def _tiny_hf(arch: str | None = None):
    cfg = tiny("qlora4") if arch is None else tiny("qlora4", f"model.arch={arch}")
    return cfg, resolve_hf_config(cfg.model)


@pytest.fixture(scope="module")
def cache_seen_by_module_fixture():
    """What a module-scoped fixture sees (test_run.py's `records` runs QLoRA loads from one)."""
    return cache_dir()


def test_module_fixtures_write_to_the_session_temp_cache(cache_seen_by_module_fixture, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    assert cache_seen_by_module_fixture.is_relative_to(base), cache_seen_by_module_fixture
    assert not cache_seen_by_module_fixture.is_relative_to(Path.home() / ".cache")


def test_cache_dir_falls_back_to_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.delenv("LLM_MEMPROF_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "llm-memprof"


def test_key_is_content_not_path(tmp_path):
    """Two clones (two paths to the same config.json) share one checkpoint; another architecture does not."""
    cfg, hf = _tiny_hf()
    copy = tmp_path / "clone" / "configs" / "models" / "tiny-llama.json"
    copy.parent.mkdir(parents=True)
    copy.write_text((MODELS_DIR / "tiny-llama.json").read_text())
    cfg2, hf2 = _tiny_hf(str(copy))
    assert _checkpoint_key(cfg.model, hf) == _checkpoint_key(cfg2.model, hf2)
    assert str(tmp_path) not in _checkpoint_key(cfg2.model, hf2)
    wider = json.loads(copy.read_text()) | {"hidden_size": 128}
    other = tmp_path / "wider.json"
    other.write_text(json.dumps(wider))
    cfg3, hf3 = _tiny_hf(str(other))
    assert _checkpoint_key(cfg3.model, hf3) != _checkpoint_key(cfg.model, hf)
    cfg4 = tiny("qlora4", "model.dtype=float16")
    assert _checkpoint_key(cfg4.model, hf) != _checkpoint_key(cfg.model, hf)


def test_key_changes_with_the_library_versions(monkeypatch):
    cfg, hf = _tiny_hf()
    before = _checkpoint_key(cfg.model, hf)
    monkeypatch.setattr(loading, "_library_versions",
                        lambda: {"torch": "9.9", "transformers": "9.9", "safetensors": "9.9"})
    assert _checkpoint_key(cfg.model, hf) != before


def test_failed_write_leaves_no_partial_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("LLM_MEMPROF_CACHE", str(tmp_path))
    _, hf = _tiny_hf()

    def broken(*a, **k):
        raise OSError("No space left on device")

    monkeypatch.setattr(loading, "_write_checkpoint", broken)
    with pytest.raises(OSError, match="No space"):
        random_checkpoint(hf, torch.bfloat16, "k")
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [".k.lock"]


def test_loser_of_the_rename_race_uses_the_winners_copy(monkeypatch, tmp_path):
    """A writer that does not take the lock (an older version) renames first: ours discards its copy."""
    monkeypatch.setenv("LLM_MEMPROF_CACHE", str(tmp_path))
    _, hf = _tiny_hf()
    real = loading._write_checkpoint

    def racing(hf_config, dtype, folder, target):
        real(hf_config, dtype, folder, target)
        winner = target.with_name("winner")
        winner.mkdir()
        real(hf_config, dtype, winner, target)
        (winner / "WINNER").touch()
        winner.rename(target)

    monkeypatch.setattr(loading, "_write_checkpoint", racing)
    path = random_checkpoint(hf, torch.bfloat16, "k")
    assert (path / "WINNER").exists() and (path / "config.json").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [".k.lock", "k"]


def _prepare(cache: str, barrier) -> None:
    """One run's checkpoint preparation, started in a child process together with two others."""
    os.environ["LLM_MEMPROF_CACHE"] = cache
    cfg = load_config(CONFIGS / "tiny_qlora4.yaml", ["train.steps=2"])
    barrier.wait(timeout=120)
    prepare_source(cfg)


def test_three_runs_at_once_on_an_empty_cache(tmp_path):
    """Issue 9 item 6: three QLoRA runs started together: one checkpoint, no crash, nothing left over.
    Processes come from a forkserver that imported the loader once (fork from this process could deadlock
    on torch's thread pools; three fresh interpreters cost ~4x the time)."""
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["profiler.measure.loading"])
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_prepare, args=(str(cache), barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    entries = sorted(p.name for p in (cache / "checkpoints").iterdir())
    keys = [e for e in entries if not e.startswith(".")]
    assert len(keys) == 1 and entries == [f".{keys[0]}.lock", keys[0]], entries
    ckpt = cache / "checkpoints" / keys[0]
    written = json.loads((ckpt / "config.json").read_text())
    assert written["model_type"] == "llama" and "_name_or_path" not in written
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert all((ckpt / f).exists() for f in set(index["weight_map"].values()))
