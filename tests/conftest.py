"""Shared fixtures: tiny configs, and the `gpu` marker that skips without CUDA (never by name filtering)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from profiler.config import REPO_ROOT, load_config

CONFIGS = REPO_ROOT / "configs"

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Random checkpoints for quantized loads go to a per-session temp dir, not the user's cache."""
    monkeypatch.setenv("LLM_MEMPROF_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny(name: str, *overrides: str, output: Path | None = None):
    """A shipped tiny_<name>.yaml with overrides; steps kept small so the suite stays fast."""
    ov = ["train.steps=2", *overrides]
    if output is not None:
        ov.append(f"output={output}")
    return load_config(CONFIGS / f"tiny_{name}.yaml", ov)
