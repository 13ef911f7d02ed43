"""Shared fixtures: tiny configs, and the `gpu` marker that skips without CUDA (never by name filtering)."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch

from profiler.config import REPO_ROOT, load_config

CONFIGS = REPO_ROOT / "configs"

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """The whole session (module and session fixtures included, and the subprocesses tests start) writes
    random checkpoints to a temp dir, never the user's ~/.cache: the cache variables point into it
    before any fixture of a narrower scope runs. tests/measure/test_loading.py checks it from a
    module-scoped fixture."""
    base = tmp_path_factory.getbasetemp()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLM_MEMPROF_CACHE", str(base / "cache"))
        mp.setenv("XDG_CACHE_HOME", str(base / "xdg-cache"))
        yield base


def tiny(name: str, *overrides: str, output: Path | None = None):
    """A shipped tiny_<name>.yaml with overrides; steps kept small so the suite stays fast."""
    ov = ["train.steps=2", *overrides]
    if output is not None:
        ov.append(f"output={output}")
    return load_config(CONFIGS / f"tiny_{name}.yaml", ov)


def run_watching_the_model(cfg) -> tuple[dict, list[weakref.ref]]:
    """harness.run(cfg), keeping weak references to every parameter the run loaded (leak tests)."""
    import profiler.measure.harness as harness

    refs: list[weakref.ref] = []
    real = harness.load_model

    def load(c):
        loaded = real(c)
        refs.extend(weakref.ref(p) for p in loaded.model.parameters())
        return loaded

    harness.load_model = load
    try:
        return harness.run(cfg), refs
    finally:
        harness.load_model = real
