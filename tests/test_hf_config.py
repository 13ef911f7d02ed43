"""profiler/hf_config.py: a model's config resolved in the vocabulary room, and the positions it allows."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from profiler.config import ModelConfig
from profiler.hf_config import position_limit, resolve_hf_config


def llama(**kw):
    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=128)
    return AutoConfig.for_model("llama", **{**base, **kw})


@pytest.mark.parametrize("kw, limit", [
    ({"max_position_embeddings": 4096}, 4096),  # plain RoPE: the config's positions
    ({"max_position_embeddings": 32768,  # Qwen2.5's documented YaRN setting: 4 x 32768
      "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}, 131072),
    ({"max_position_embeddings": 131072,  # Llama-3.1: factor 8 x 8192 < the 131072 it states
      "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192,
                       "low_freq_factor": 1.0, "high_freq_factor": 4.0}}, 131072),
    ({"max_position_embeddings": 2048, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, 4096),
])
def test_position_limit_follows_rope_scaling(kw, limit):
    assert position_limit(llama(**kw))[0] == limit


def test_gpt2_positions_are_its_learned_table():
    assert position_limit(AutoConfig.for_model("gpt2", n_positions=1024)) == (1024, "n_positions")


def test_bundled_models_resolve_without_the_measuring_room():
    import subprocess
    import sys

    from profiler.config import REPO_ROOT

    code = ("import sys; from profiler.formulas import estimate; from profiler.config import load_config; "
            "estimate('components', load_config('configs/tiny_lora.yaml')); "
            "print(sorted(m for m in sys.modules if m.startswith('profiler.measure')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                         env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}, check=True).stdout
    assert out.strip() == "[]"  # issue 23 item 31: the formulas read a model without importing measure
    assert resolve_hf_config(ModelConfig(arch="tiny-llama")).model_type == "llama"
