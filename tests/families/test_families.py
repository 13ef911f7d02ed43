"""Every causal-LM family of the coverage matrix (scripts/family_matrix.py): the tiny config runs for real
on the CPU, `simulate` reproduces its per-phase peaks, and `components` is within 10 % of `simulate` at
seq 256 and 2048 (every family is modelled; a block the model does not describe would say so). Gemma-2 works
with the default attention.
Run: `python -m pytest tests/families/test_families.py`."""

from __future__ import annotations

import importlib.util
import json

import pytest

from profiler.cli import main
from profiler.config import MODELS_DIR, REPO_ROOT, ConfigError
from profiler.formulas.arch import arch_of
from profiler.formulas.components import components_estimate, not_modelled
from profiler.measure.harness import run
from profiler.measure.loading import resolve_attn_implementation, resolve_hf_config
from profiler.simulate.backend import simulate

_spec = importlib.util.spec_from_file_location("family_matrix", REPO_ROOT / "scripts" / "family_matrix.py")
fm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fm)

TINY = [tiny for _, tiny, _ in fm.FAMILIES]
# the families whose decoder block activations.py models: all of them since norms and activations are probed
# on meta tensors and the block's data flow (pre/post norms, parallel attention/MLP, fused qkv) is read off it
MODELLED = set(TINY)


def cfg_of(arch: str, regime: str, seq: int = 32):
    return fm.family_config(arch, regime, seq, steps=1, warmup_steps=0)


def test_every_family_has_a_tiny_and_a_bundled_architecture():
    for _, tiny, real in fm.FAMILIES:
        assert (MODELS_DIR / f"{tiny}.json").is_file() and (MODELS_DIR / f"{real}.json").is_file()
        hf = json.loads((MODELS_DIR / f"{tiny}.json").read_text())
        assert hf.get("hidden_size", hf.get("n_embd")) == 64 and hf["vocab_size"] == 512


@pytest.mark.parametrize("regime", ["full", "lora"])
@pytest.mark.parametrize("arch", TINY)
def test_tiny_family_runs_and_simulate_matches_exactly(arch, regime):
    cfg = cfg_of(arch, regime)
    real, fake = run(cfg), simulate(cfg)
    assert (real["status"], fake["status"]) == ("ok", "ok"), (real["error"], fake["error"])
    assert fm.phase_peaks(fake) == fm.phase_peaks(real)


@pytest.mark.parametrize("arch", TINY)
def test_tiny_family_qlora4_simulate_matches_exactly(arch):
    """Byte for byte in every phase and category, bitsandbytes' process-wide 256-entry dynamic map included
    (Falcon too, though transformers leaves its FalconLinear layers unquantized: nothing is 4-bit there)."""
    cfg = cfg_of(arch, "qlora4")
    real, fake = run(cfg), simulate(cfg)
    assert (real["status"], fake["status"]) == ("ok", "ok"), (real["error"], fake["error"])
    assert fm.phase_peaks(fake) == fm.phase_peaks(real)
    assert [p["breakdown"] for p in fake["phases"]] == [p["breakdown"] for p in real["phases"]]


@pytest.mark.parametrize("arch", sorted(MODELLED))
def test_components_within_10_percent_of_simulate(arch):
    for seq in fm.SEQS:
        err, notes = fm.components_vs_simulate(fm.family_config(arch, "full", seq))  # as the docs/families.md table
        assert abs(err) <= 10, (arch, seq, err)
        assert "not modelled" not in notes


def test_a_block_the_model_does_not_describe_says_so(monkeypatch):
    """A block outside the activation model (here: parallel attention/MLP with post-norms, which no bundled
    family has) gets a number and the note, never a silent number."""
    from dataclasses import replace

    import profiler.formulas.components as comp

    cfg = cfg_of("tiny-gpt-neox", "lora")
    arch = arch_of(cfg)
    odd = replace(arch, block=replace(arch.block, post_norms=2))
    assert not_modelled(odd) == ["parallel attention/MLP with post-norms"]
    assert comp.not_modelled_note(odd) == ("gpt_neox not modelled; simulate is the reference "
                                           "(parallel attention/MLP with post-norms)")
    monkeypatch.setattr(comp, "not_modelled", lambda a: ["parallel attention/MLP with post-norms"])
    assert "gpt_neox not modelled; simulate is the reference" in components_estimate(cfg).notes


def test_modelled_set_is_what_the_block_reader_says():
    """MODELLED above is not a hand list the code could drift from: the block reader agrees."""
    assert {a for a in TINY if not not_modelled(arch_of(cfg_of(a, "full")))} == MODELLED


def test_estimate_prints_not_modelled(capsys, monkeypatch):
    import profiler.formulas.components as comp

    monkeypatch.setattr(comp, "not_modelled", lambda a: ["a block the model does not describe"])
    assert main(["estimate", str(REPO_ROOT / "configs" / "tiny_full.yaml"), "model.arch=tiny-falcon",
                 "device=cpu", "--estimator", "components"]) == 0
    assert "components: falcon not modelled; simulate is the reference" in capsys.readouterr().out


def test_no_bundled_family_is_not_modelled(capsys):
    assert main(["estimate", str(REPO_ROOT / "configs" / "tiny_full.yaml"), "model.arch=tiny-falcon",
                 "device=cpu", "--estimator", "components"]) == 0
    assert "not modelled" not in capsys.readouterr().out


def test_gemma2_default_attention_is_eager_and_recorded():
    cfg = cfg_of("tiny-gemma2", "full")
    assert cfg.model.attn_implementation == "auto"
    rec = run(cfg)
    assert rec["status"] == "ok" and rec["attention_kernel"] == "eager"
    assert components_estimate(cfg).notes.endswith("attention kernel eager")


def test_unsupported_attention_is_a_config_error_naming_the_allowed(capsys):
    cfg = cfg_of("tiny-gemma2", "full")
    sdpa = cfg.model.model_copy(update={"attn_implementation": "sdpa"})
    with pytest.raises(ConfigError, match=r"'sdpa' is not supported by Gemma2ForCausalLM; allowed: auto, eager"):
        resolve_attn_implementation(sdpa, resolve_hf_config(sdpa))
    code = main(["run", str(REPO_ROOT / "configs" / "tiny_full.yaml"), "model.arch=tiny-gemma2",
                 "model.attn_implementation=sdpa", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "allowed: auto, eager" in err


def test_docs_table_is_what_the_script_renders_from_its_json():
    data = json.loads(fm.DEFAULT_JSON.read_text())
    assert {r["arch"] for r in data["rows"]} == set(TINY)
    assert fm.readme_block(REPO_ROOT / "docs" / "families.md") == fm.markdown(data["rows"], data.get("real"))


def test_markdown_marks_unmodelled_and_inexact_cells():
    rows = [{"arch": "tiny-falcon", "regime": "full", "run": "ok", "attention": "sdpa", "simulate_vs_run": "0.2%",
             "components_pct_256": -35.5, "components_pct_2048": -91.0, "not_modelled": True}]
    table = fm.markdown(rows)
    assert ("| Falcon | `tiny-falcon` | full | ok | sdpa | 0.2% | not modelled (-35.5%) "
            "| not modelled (-91.0%) |") in table


def test_real_size_blocks_read_off_the_meta_model():
    def arch(name):
        return arch_of(fm.family_config(name, "full"))

    gemma = arch("gemma-2-9b")
    assert (gemma.default_attention, gemma.block.softcap, gemma.block.norms) == ("eager", True, 4)
    assert (gemma.block.pre_norms, gemma.block.post_norms, gemma.block.attn_softcap, gemma.block.final_softcap) == (
        2, 2, True, True)
    qwen3, phi3 = arch("qwen3-8b"), arch("phi-3-mini")
    assert qwen3.block.qk_norm and qwen3.block.qk_norm_width == qwen3.head_dim and not not_modelled(qwen3)
    assert phi3.block.sliding_window == 2047 and not not_modelled(phi3)
    falcon = arch("falcon-7b")
    assert falcon.block.parallel and falcon.block.norm_type == "LayerNorm" and falcon.block.pre_norms == 1
    assert (falcon.kv_heads, falcon.block.sdpa_kv_heads, falcon.block.mask_always) == (1, 1, True)
    assert not any(lin.quantizable for lin in falcon.linears if lin.layer is not None)  # FalconLinear
    olmo, gpt2, neox = arch("olmo-2-7b"), arch("gpt2"), arch("pythia-6.9b")
    assert (olmo.block.pre_norms, olmo.block.post_norms, olmo.block.qk_norm_width) == (0, 2, olmo.hidden)
    assert (gpt2.block.rope, gpt2.block.fused_qkv, gpt2.block.layer_dropouts, gpt2.block.attn_dropout) == (
        False, True, 2, 0.1)
    assert dict(gpt2.block.act_cost) == {2: 8, 4: 16}  # gelu_new saves 4 tensors of its input's size
    assert neox.block.parallel and neox.block.pre_norms == 2 and neox.block.rope
    gemma3 = arch("gemma-3-1b")
    assert gemma3.block.windows.count(None) == 4 and len(gemma3.block.windows) == gemma3.layers  # 1 in 6 global
    assert not any(not_modelled(a) for a in (gemma, qwen3, phi3, falcon, olmo, gpt2, neox, gemma3))
