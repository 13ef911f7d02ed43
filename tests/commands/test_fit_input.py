"""`fit` and `profiler.fit` on bad input: one line, exit 2 (ConfigError), before any simulation (issue 23)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import profiler
from profiler.cli import main
from profiler.commands.fit import add_arguments, build_config
from profiler.config import MODELS_DIR, REPO_ROOT, ConfigError


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if not x.startswith("note:")]
    assert len(lines) == 1 and "Traceback" not in err, err[:3000]
    return lines[0]


def fit_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_intermixed_args(list(argv))


# ---------------------------------------------------------------- item 4: an option and an override of one key


@pytest.mark.parametrize("argv, key, option", [
    (["--seq", "512", "model.arch=tiny-gpt2"], "model.arch", "MODEL 'tiny-llama'"),
    (["--seq", "512", "model.hub=gpt2"], "model.hub", "MODEL 'tiny-llama'"),
    (["--seq", "512", "train.seq_len=1024"], "train.seq_len", "--seq 512"),
    (["--regime", "full", "regime.kind=lora"], "regime.kind", "--regime full"),
    (["--regime", "qlora4", "regime.bits=8"], "regime.bits", "--regime qlora4"),
    (["--regime", "full", "regime={kind: lora}"], "regime", "--regime full"),
    (["--batch", "2", "train.batch_size=4"], "train.batch_size", "--batch 2"),
    (["--batch", "auto", "train.batch_size=4"], "train.batch_size", "--batch auto"),
    (["--optimizer", "sgd", "optimizer.name=adamw"], "optimizer.name", "--optimizer sgd"),
    (["--checkpointing", "train.gradient_checkpointing=false"], "train.gradient_checkpointing", "--checkpointing"),
    (["device=cpu"], "device", "fit"),
])
def test_an_override_of_a_key_an_option_sets_is_refused(capsys, argv, key, option):
    assert main(["fit", "tiny-llama", "--gpu", "h100", "--no-search", "--json", *argv]) == 2
    line = one_line(capsys)
    assert line.startswith(f"error: {key}: the override") and f"conflicts with {option}" in line
    assert capsys.readouterr().out == ""  # nothing simulated, no JSON


def test_the_same_value_twice_and_unrelated_keys_are_not_conflicts():
    cfg = build_config(fit_args("tiny-llama", "--seq", "64", "--regime", "full", "--batch", "2",
                                "train.seq_len=64", "regime.kind=full", "train.batch_size=2", "model.dtype=float16",
                                "train.steps=1"), "tiny-llama")
    assert (cfg.train.seq_len, cfg.regime.kind, cfg.train.batch_size, cfg.model.dtype) == (64, "full", 2, "float16")
    cfg = build_config(fit_args("tiny-llama", "train.seq_len=96", "regime.kind=freeze"), "tiny-llama")
    assert cfg.train.seq_len == 96 and cfg.regime.kind == "freeze"  # no option given: the override is the answer


def test_the_api_defaults_do_not_conflict_with_overrides_and_given_ones_do():
    with pytest.raises(ConfigError, match="conflicts with --seq 64"):
        profiler.fit("tiny-llama", seq=64, gpu="h100", overrides=["train.seq_len=32"])
    import inspect

    from profiler.api import fit

    sig = inspect.signature(fit)  # regime / seq / batch default to None: the command's defaults apply
    assert all(sig.parameters[k].default is None for k in ("regime", "seq", "batch"))


# ---------------------------------------------------------------- item 8: a config.json that is not UTF-8


@pytest.fixture
def nonutf8(tmp_path) -> Path:
    p = tmp_path / "nonutf8.json"
    p.write_bytes(b"\xff\xfe")
    return p


def test_a_non_utf8_config_json_is_one_line_every_way_in(capsys, tmp_path, nonutf8, monkeypatch):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(nonutf8, ckpt / "config.json")
    for model in (str(nonutf8), str(ckpt)):
        assert main(["fit", model, "--gpu", "h100"]) == 2
        assert "is not UTF-8 text" in one_line(capsys)
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        profiler.fit(nonutf8, gpu="h100")
    # a cached Hub config.json (huggingface_hub's cache layout: refs/main -> snapshots/<commit>/config.json)
    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--someone--broken"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    shutil.copy(nonutf8, repo / "snapshots" / ("0" * 40) / "config.json")
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(c, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(hub))
    assert main(["fit", "someone/broken", "--gpu", "h100"]) == 2
    assert "is not UTF-8 text" in one_line(capsys)


# ---------------------------------------------------------------- item 13: HF_HOME is a file


def test_hf_home_that_is_a_file_is_one_line(tmp_path):
    somefile = tmp_path / "somefile"
    somefile.write_text("x")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "HF_HOME": str(somefile)}
    proc = subprocess.run([sys.executable, "-m", "profiler", "fit", "meta-llama/Llama-3.1-8B", "--gpu", "h100"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert "HF_HOME" in proc.stderr and "not a directory" in proc.stderr


# ---------------------------------------------------------------- item 14: the API's argument types


@pytest.mark.parametrize("kwargs, message", [
    ({"model": "llama-2-7b", "gpu": 123}, "gpu: 123 is not allowed"),
    ({"model": None, "gpu": "h100"}, "model: None is not allowed"),
    ({"model": 7, "gpu": "h100"}, "model: 7 is not allowed"),
    ({"model": "tiny-llama", "gpu": "h100", "regime": ["lora"]}, "regime: ['lora'] is not allowed"),
    ({"model": "tiny-llama", "gpu": "h100", "overrides": "train.seq_len=64"}, "overrides:"),
    ({"model": "tiny-llama", "gpu_memory": 2.5}, "gpu_memory: 2.5 is not allowed"),
    ({"model": "tiny-llama", "gpu": "h100", "config": 3}, "config: 3 is not allowed"),
    ({"model": "tiny-llama", "gpu": "h100", "workers": "x"}, "workers: 'x' is not allowed"),
])
def test_api_arguments_of_the_wrong_type_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        profiler.fit(**kwargs)


@pytest.mark.parametrize("call, message", [
    (lambda: profiler.simulate(123), "config: 123 is not allowed"),
    (lambda: profiler.estimate(None), "config: None is not allowed"),
    (lambda: profiler.max_batch(REPO_ROOT / "configs/tiny_full.yaml", gpu=80), "gpu: 80 is not allowed"),
    (lambda: profiler.simulate(REPO_ROOT / "configs/tiny_full.yaml", "train.seq_len=8"), "overrides:"),
])
def test_the_other_api_functions_check_their_argument_types(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


# ---------------------------------------------------------------- item 12: a bad --calibration table


def _tables(tmp_path: Path) -> dict[str, Path]:
    from profiler.learn.calibrate import CSV_FIELDS

    header = ",".join(CSV_FIELDS)
    row = dict.fromkeys(CSV_FIELDS, "")
    row.update(device_slug="x", device_name="X", regime="full", target="nvml_peak", estimator="simulate",
               n_runs="3", a="1.0", b="0")
    nan_row = {**row, "a": "nan"}
    files = {
        "wrong columns": "foo,bar\n1,2\n",
        "header only": header + "\n",
        "NaN in a": header + "\n" + ",".join(nan_row[k] for k in CSV_FIELDS) + "\n",
    }
    out = {}
    for name, text in files.items():
        out[name] = tmp_path / f"{name.replace(' ', '_')}.csv"
        out[name].write_text(text)
    out["non-UTF-8"] = tmp_path / "latin1.csv"
    out["non-UTF-8"].write_bytes(header.encode() + b"\n\xff\xfe\n")
    return out


@pytest.mark.parametrize("case, message", [
    ("wrong columns", "missing 18 of its 18 columns: a, b, device_name"), ("header only", "no rows"),
    ("non-UTF-8", "not UTF-8"),
    ("NaN in a", "line 2: a = 'nan'; allowed: a finite number"),
])
def test_a_bad_calibration_table_is_the_same_line_for_fit_and_estimate(capsys, tmp_path, case, message):
    table = str(_tables(tmp_path)[case])
    assert main(["fit", "tiny-llama", "--gpu", "h100", "--no-search", "--calibration", table]) == 2
    from_fit = one_line(capsys)
    assert main(["estimate", str(REPO_ROOT / "configs/tiny_full.yaml"), "--calibration", table]) == 2
    from_estimate = one_line(capsys)
    assert from_fit == from_estimate and from_fit.startswith("error: --calibration: ") and message in from_fit


# ---------------------------------------------------------------- item 16: target_modules=[]


def test_empty_target_modules_names_the_modules(capsys):
    assert main(["fit", "tiny-llama", "--gpu", "h100", "--no-search", "--seq", "32", "--json",
                 "regime.lora.target_modules=[]"]) == 2  # --json: no progress lines on stderr
    line = one_line(capsys)
    assert "regime.lora.target_modules: [] adapts nothing" in line and "q_proj" in line and "all-linear" in line


# ---------------------------------------------------------------- item 26: beyond the model's positions


@pytest.mark.parametrize("argv, limit", [
    (["llama-2-7b", "--seq", "100000"], "allowed: 1..4096 (max_position_embeddings)"),
    (["tiny-gpt2", "--seq", "5000"], "(n_positions)"),
    (["llama-2-7b", "--seq", "4000", "--regime", "inference", "regime.new_tokens=200"], "1..4096"),
])
def test_seq_beyond_the_models_positions_is_refused(capsys, argv, limit):
    assert main(["fit", *argv, "--gpu", "h100"]) == 2
    line = one_line(capsys)
    assert "train.seq_len" in line and "beyond the positions" in line and limit in line


def test_rope_scaling_stretches_the_limit(tmp_path, capsys):
    data = json.loads((MODELS_DIR / "tiny-llama.json").read_text())
    data.update(max_position_embeddings=256,
                rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256})
    p = tmp_path / "yarn" / "config.json"
    p.parent.mkdir()
    p.write_text(json.dumps(data))
    cfg = build_config(fit_args(str(p), "--seq", "1024"), str(p))  # 4 x 256: allowed
    assert cfg.train.seq_len == 1024
    assert main(["fit", str(p), "--seq", "1025", "--gpu", "h100"]) == 2
    assert "allowed: 1..1024 (yarn rope scaling: factor 4 x 256 positions)" in one_line(capsys)
