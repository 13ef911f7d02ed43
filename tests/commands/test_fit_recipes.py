"""`fit --recipe`: TRL by default, its defaults printed with their sources, plain = the loop before recipes, and
a verdict on every bundled mixture-of-experts model with the defaults.
Run: `python -m pytest tests/commands/test_fit_recipes.py`."""

from __future__ import annotations

import json

import pytest

from profiler.cli import main
from profiler.config import bundled_architectures, load_config, moe_experts

pytest.importorskip("trl")


def fit_json(capsys, *argv) -> tuple[int, dict]:
    rc = main(["fit", "--json", "--no-search", *argv])
    return rc, json.loads(capsys.readouterr().out)


def test_fit_uses_trl_by_default_and_says_which_defaults_it_filled(capsys):
    rc, res = fit_json(capsys, "tiny-llama", "--regime", "qlora4", "--seq", "64", "--gpu", "rtx4090")
    assert rc == 0 and res["recipe"] == "trl"
    c = res["config"]
    assert c["train"]["gradient_checkpointing"] and c["train"]["autocast"] == "bf16"
    assert c["train"]["loss"] == "chunked" and not c["regime"]["prepare_kbit"]
    assert c["regime"]["lora"]["dtype"] == "bfloat16"
    assert [d.split("=")[0] for d in res["defaults"]] == [
        "train.gradient_checkpointing", "train.autocast", "optimizer.name", "train.max_grad_norm", "train.loss",
        "regime.prepare_kbit", "regime.lora.dtype"]
    assert all("(" in d and ".py" in d for d in res["defaults"])  # each names its source line


def test_fit_header_prints_the_recipe(capsys):
    main(["fit", "tiny-llama", "--regime", "lora", "--seq", "64", "--gpu", "rtx4090", "--no-search"])
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith("| recipe trl") and out.splitlines()[1].startswith("fits: ")
    assert "recipe trl: defaults it filled" in out and "train.loss=\"chunked\"" in out


def test_recipe_plain_is_the_loop_before_recipes(capsys):
    rc, res = fit_json(capsys, "tiny-llama", "--regime", "qlora4", "--seq", "64", "--gpu", "rtx4090",
                       "--recipe", "plain")
    assert res["recipe"] == "plain" and res["defaults"] == []
    before = load_config(None, base={"model": {"arch": "tiny-llama"}, "regime": {"kind": "qlora", "bits": 4},
                                     "train": {"seq_len": 64}, "device": "cuda",
                                     "gpu_arch": res["config"]["gpu_arch"]})  # fit --gpu sets it (not a recipe key)
    cfg = load_config(None, base=res["config"])
    assert cfg.config_hash() == before.config_hash()  # the hash fit's plain config had before recipes existed


def test_flags_and_overrides_beat_the_recipe(capsys):
    rc, res = fit_json(capsys, "tiny-llama", "--regime", "qlora4", "--seq", "64", "--gpu", "rtx4090",
                       "--optimizer", "adamw_torch", "train.gradient_checkpointing=false")
    assert res["config"]["optimizer"]["name"] == "adamw" and not res["config"]["train"]["gradient_checkpointing"]
    assert not any(d.startswith(("optimizer.name", "train.gradient_checkpointing")) for d in res["defaults"])


def test_recipe_flag_and_recipe_override_together_are_one_line(capsys):
    rc = main(["fit", "tiny-llama", "--gpu", "rtx4090", "--recipe", "trl", "recipe=plain"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: --recipe: trl conflicts with the override 'recipe=plain'; give one of them"]


MOE = [a for a in bundled_architectures() if a.startswith("tiny") and moe_experts(load_config(
    None, base={"model": {"arch": a}}).model) > 1]


@pytest.mark.parametrize("arch", MOE)
@pytest.mark.parametrize("regime", ["lora", "qlora4"])
@pytest.mark.parametrize("recipe", ["trl", "plain"])
def test_every_bundled_moe_model_gets_a_verdict_with_the_defaults(capsys, arch, regime, recipe):
    rc, res = fit_json(capsys, arch, "--regime", regime, "--seq", "64", "--gpu", "h100", "--recipe", recipe)
    assert rc in (0, 1) and res["verdict"].startswith(("fits", "does not fit"))
    assert res["config"]["regime"]["lora"]["dropout"] == 0
    assert any(d.startswith("regime.lora.dropout=0.0  (mixture-of-experts") for d in res["defaults"])


def test_moe_qlora_with_prepare_kbit_is_refused_in_one_line(capsys):
    rc = main(["fit", MOE[0], "--regime", "qlora4", "--gpu", "h100", "regime.prepare_kbit=true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "regime.prepare_kbit: true upcasts" in err[0] and "allowed: false" in err[0]
