"""`model.attn_implementation: auto` in the shipped configs: what it resolves to, how it hashes, and that a model
refusing sdpa (Gemma-2) simulates from a shipped config."""

from __future__ import annotations

import json

import pytest

from profiler.cli import main
from profiler.config import REPO_ROOT, load_config
from profiler.hf_config import hashed_attention, resolve_attn_implementation, resolve_hf_config

CONFIGS = REPO_ROOT / "configs"


def _hash(name: str, *overrides: str) -> str:
    return load_config(CONFIGS / name, list(overrides)).config_hash()


@pytest.mark.parametrize("arch,expected", [("tiny-llama", "sdpa"), ("tiny-qwen2", "sdpa"), ("tiny-gemma2", "eager"),
                                           ("gemma-2-9b", "eager"), ("llama-2-7b", "sdpa")])
def test_auto_resolves_to_what_transformers_supports(arch, expected):
    cfg = load_config(CONFIGS / "tiny_lora.yaml", [f"model.arch={arch}"])
    assert cfg.model.attn_implementation == "auto"
    assert resolve_attn_implementation(cfg.model, resolve_hf_config(cfg.model)) == expected
    assert hashed_attention(cfg.model) == expected


def test_auto_resolving_to_sdpa_hashes_like_the_old_explicit_sdpa():
    # the shipped configs said sdpa before they said auto: their results keep their hashes
    for name in ("tiny_lora.yaml", "llama7b_lora.yaml", "llama7b_qlora4.yaml"):
        assert load_config(CONFIGS / name).model.attn_implementation == "auto"
        assert _hash(name) == _hash(name, "model.attn_implementation=sdpa")
    assert _hash("tiny_lora.yaml") == "05e4095e7f07486c"  # computed when tiny_lora.yaml said sdpa


def test_a_different_resolution_hashes_differently():
    assert _hash("tiny_lora.yaml") != _hash("tiny_lora.yaml", "model.attn_implementation=eager")
    gemma = _hash("tiny_lora.yaml", "model.arch=tiny-gemma2")
    assert gemma == _hash("tiny_lora.yaml", "model.arch=tiny-gemma2", "model.attn_implementation=eager")
    assert gemma != _hash("tiny_lora.yaml", "model.arch=tiny-gemma2", "model.attn_implementation=flash_attention_2")


def test_a_hub_id_keeps_auto_in_its_hash():
    """Resolving a Hub id would need the network: its `auto` is hashed as written (no lookup at all)."""
    cfg = load_config(None, [], base={"model": {"hub": "someone/not-a-real-model"}, "device": "cpu"})
    assert hashed_attention(cfg.model) == "auto"
    explicit = load_config(None, [], base={"model": {"hub": "someone/not-a-real-model",
                                                     "attn_implementation": "sdpa"}, "device": "cpu"})
    assert cfg.config_hash() != explicit.config_hash()


def test_sdpa_on_gemma2_is_refused_with_the_allowed_values(tmp_path, capsys):
    rc = main(["simulate", str(CONFIGS / "tiny_lora.yaml"), "model.arch=tiny-gemma2", "model.attn_implementation=sdpa",
               "--quiet", "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "model.attn_implementation: 'sdpa' is not supported by Gemma2ForCausalLM" in err and "auto" in err


def test_a_shipped_config_simulates_gemma2(tmp_path, capsys):
    """The path of `simulate configs/llama7b_lora.yaml model.arch=gemma-2-9b` (issue 24), on the tiny Gemma-2 twin
    of the same shipped config: auto picks eager and the simulation runs."""
    out = tmp_path / "o.jsonl"
    rc = main(["simulate", str(CONFIGS / "llama7b_lora.yaml"), "model.arch=tiny-gemma2", "train.steps=1",
               "--quiet", "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    rec = json.loads(out.read_text().splitlines()[-1])
    assert rec["status"] == "ok" and rec["config"]["model"]["attn_implementation"] == "auto"
    assert rec["attention_kernel"] == "eager"
    assert rec["config_hash"] == load_config(CONFIGS / "llama7b_lora.yaml", [
        "model.arch=tiny-gemma2", "train.steps=1", "model.attn_implementation=eager"]).config_hash()


def test_the_hash_fast_path_agrees_with_transformers_on_every_bundled_architecture():
    """config_hash resolves `auto` for a bundled architecture from NO_SDPA_MODEL_TYPES without importing the
    modeling code; for each bundled config.json that answer is what transformers' own classes give."""
    from profiler.config import MODELS_DIR, ModelConfig
    from profiler.hf_config import _auto_attention

    archs = sorted(p.stem for p in MODELS_DIR.glob("*.json"))
    assert len(archs) > 30
    for arch in archs:
        mc = ModelConfig(arch=arch)
        assert _auto_attention.__wrapped__(arch, None) == resolve_attn_implementation(mc, resolve_hf_config(mc)), arch
