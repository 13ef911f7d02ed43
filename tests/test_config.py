"""Config validation: every shipped config loads; bad input is one line naming the key, exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from profiler.cli import main
from profiler.config import REPO_ROOT, ConfigError, bundled_architectures, load_config, parse_bytes

SHIPPED = sorted((REPO_ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.model.arch in bundled_architectures()
    assert cfg.device == ("cpu" if path.name.startswith("tiny_") else "cuda")


def test_shipped_llama7b_configs_have_tiny_twins():
    big = {p.name.removeprefix("llama7b_") for p in SHIPPED if p.name.startswith("llama7b_")}
    small = {p.name.removeprefix("tiny_") for p in SHIPPED if p.name.startswith("tiny_")}
    regimes = {f"{r}.yaml" for r in ("full", "freeze", "lora", "qlora8", "qlora4", "inference")}
    assert regimes <= big and regimes <= small


def test_overrides_are_typed_and_applied():
    cfg = load_config(REPO_ROOT / "configs/tiny_lora.yaml",
                      ["train.batch_size=4", "regime.lora.target_modules=[q_proj,v_proj]",
                       "train.gradient_checkpointing=true", "optimizer.lr=1e-4"])
    assert cfg.optimizer.lr == 1e-4  # YAML reads 1e-4 as a string; a float field still takes it
    assert cfg.train.batch_size == 4
    assert cfg.regime.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.train.gradient_checkpointing is True


def test_config_hash_ignores_output_only():
    a = load_config(REPO_ROOT / "configs/tiny_full.yaml", ["output=/tmp/a.jsonl"])
    b = load_config(REPO_ROOT / "configs/tiny_full.yaml", ["output=/tmp/b.jsonl"])
    c = load_config(REPO_ROOT / "configs/tiny_full.yaml", ["train.seq_len=65"])
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_parse_bytes_units():
    assert parse_bytes("80GiB") == 80 * 2**30
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes("512MiB") == 512 * 2**20
    for bad in ("lots", "24", "-1GiB", "2XB"):
        with pytest.raises(ValueError, match="not a size"):
            parse_bytes(bad)


BAD = [
    # (overrides or yaml text, the dotted key the message must name, a word it must contain)
    (["regime.kind=sideways"], "regime.kind", "allowed: 'full'"),
    (["regime.bits=3"], "regime.bits", "allowed: 4 or 8"),
    (["train.batch_size=-1"], "train.batch_size", "greater than 0"),
    (["optimizer.name=adamx"], "optimizer.name", "adamw_8bit"),
    (["regime.lora.alhpa=8"], "regime.lora.alhpa", "did you mean 'alpha'"),
    (["model.arch=llama-2-7"], "model.arch", "did you mean 'llama-2-7b'"),
    (["model.arch=null", "model.path=/nonexistent/ckpt"], "model.path", "does not exist"),
    (["model.hub=meta-llama/Llama-2-7b-hf"], "model", "exactly one of arch, path, hub"),
    (["max_memory=lots"], "max_memory", "not a size"),
    (["max_memory=24"], "max_memory", "with a unit"),
    (["train.batch_size=true"], "train.batch_size", "integer"),
    (["device=tpu"], "device", "allowed: 'cuda' or 'cpu'"),
    (["train.autocast=fp8"], "train.autocast", "allowed"),
    (["regime.quant_type=nf3"], "regime.quant_type", "nf4"),
]


@pytest.mark.parametrize("overrides,key,word", BAD, ids=[b[1] + ":" + b[0][-1] for b in BAD])
def test_bad_config_one_line_exit_2_nothing_written(tmp_path, capsys, overrides, key, word):
    out = tmp_path / "runs.jsonl"
    rc = main(["run", str(REPO_ROOT / "configs/tiny_full.yaml"), *overrides, "--output", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {key}"), err
    assert word in err
    assert not out.exists()


def test_malformed_yaml_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  arch: tiny-llama\n train: [\n")
    assert main(["run", str(bad), "--quiet", "--output", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "malformed YAML at line" in err and len(err.splitlines()) == 1
    assert main(["run", str(tmp_path / "nope.yaml"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_target_module_absent_from_model(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    rc = main(["run", str(REPO_ROOT / "configs/tiny_lora.yaml"), "regime.lora.target_modules=[qkv_proj]",
               "--output", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: regime.lora.target_modules") and "q_proj" in err
    assert not out.exists()


def test_unknown_command_and_flag(capsys):
    assert main(["rnu"]) == 2
    assert "did you mean 'run'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["run", "configs/tiny_full.yaml", "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--bogus" in err


def test_bad_config_from_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "profiler", "run", "configs/tiny_full.yaml", "regime.kind=nope",
                           "--output", str(tmp_path / "o.jsonl")], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert not (tmp_path / "o.jsonl").exists()


def test_cuda_requested_without_gpu_is_a_config_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the CPU-only message cannot appear")
    rc = main(["run", str(REPO_ROOT / "configs/llama7b_lora.yaml"), "--output", str(tmp_path / "o.jsonl"), "--quiet"])
    assert rc == 2
    assert capsys.readouterr().err.startswith("error: device: 'cuda' is not available")


def test_config_error_type():
    with pytest.raises(ConfigError):
        load_config(None, ["model.arch=tiny-llama", "train.steps=0"])


def test_readme_schema_table_is_current():
    import importlib.util

    spec = importlib.util.spec_from_file_location("schema_table", REPO_ROOT / "scripts" / "schema_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.markdown() in (REPO_ROOT / "README.md").read_text()


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_validates_every_entry(path, tmp_path):
    from profiler.commands.sweep import load_sweep

    plan = load_sweep(path, output=tmp_path / "o.jsonl")
    assert plan.entries and all(e.config_hash == e.config.config_hash() for e in plan.entries)


def test_env_command_reports_this_machine(capsys):
    import json

    import torch

    assert main(["env", "--device", "cpu"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["device_name"] == "cpu" and env["torch"] == torch.__version__
    if not torch.cuda.is_available():
        assert main(["env", "--device", "cuda"]) == 2
        assert "not available" in capsys.readouterr().err
