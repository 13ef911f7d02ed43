"""`profiler estimate`: the table, the fit check, and --max-batch / --max-seq solving."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from profiler.commands.estimate import add_arguments, main, solve_max, with_train
from profiler.config import MODELS_DIR, REPO_ROOT, load_config, parse_bytes
from profiler.formulas import ESTIMATORS, estimate

LLAMA7B_FULL = str(REPO_ROOT / "configs" / "llama7b_full.yaml")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    rc = main(parser.parse_args(list(argv)))
    out, err = capsys.readouterr()
    return rc, out, err


def test_table_lists_every_estimator_and_fit(capsys):
    rc, out, err = run(capsys, LLAMA7B_FULL, "--gpu-memory", "80GiB")
    assert rc == 0
    for name in ESTIMATORS:  # the registry itself is pinned in test_formulas; inapplicable ones say so on stderr
        assert name in out or f"skipped: {name}" in err
    row = next(line for line in out.splitlines() if "mixed_precision_16" in line and "│" in line)
    assert "NO" in row  # 16 B/param x 6.74e9 = 100.4 GiB > 80 GiB
    row = next(line for line in out.splitlines() if "adam_8_bytes" in line and "│" in line)
    assert "50.21" in row and "yes" in row  # 8 x 6,738,415,616 B = 50.21 GiB


@pytest.mark.parametrize("field", ["batch_size", "seq_len"])
def test_solve_max_fits_and_plus_one_does_not(field):
    cfg = load_config(LLAMA7B_FULL, ["regime.kind=lora"])
    budget = parse_bytes("40GiB")
    best = solve_max(cfg, "components", field, budget)
    assert best is not None and best > 1
    assert estimate("components", with_train(cfg, **{field: best})).total <= budget
    assert estimate("components", with_train(cfg, **{field: best + 1})).total > budget


def test_solve_max_edge_cases():
    cfg = load_config(LLAMA7B_FULL, [])
    assert solve_max(cfg, "adam_8_bytes", "batch_size", parse_bytes("80GiB")) is None  # no batch term
    assert solve_max(cfg, "components", "batch_size", parse_bytes("10GiB")) == 0  # weights alone exceed it


def test_max_batch_flag_prints_solution(capsys):
    rc, out, _ = run(
        capsys,
        LLAMA7B_FULL,
        "regime.kind=lora",
        "--estimator",
        "components",
        "--max-batch",
        "--gpu-memory",
        "40GiB",
    )
    best = solve_max(
        load_config(LLAMA7B_FULL, ["regime.kind=lora"]), "components", "batch_size", parse_bytes("40GiB")
    )
    row = next(line for line in out.splitlines() if "components" in line and "│" in line)
    assert rc == 0 and row.rstrip(" │").split()[-1] == str(best)


def test_any_hf_config_json_as_model(capsys, tmp_path):
    cfg = json.loads((MODELS_DIR / "llama-2-7b.json").read_text())
    cfg["num_hidden_layers"] = 16
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    rc, out, _ = run(
        capsys, LLAMA7B_FULL, f"model.arch={path}", "--estimator", "adam_8_bytes", "--unit", "GB"
    )
    half = 16 * 202_383_360 + 2 * 32000 * 4096 + 4096  # layers + embed + head + final norm
    assert rc == 0 and f"{8 * half / 1e9:.2f}" in out


def test_config_errors_exit_2(capsys):
    rc, _, err = run(capsys, LLAMA7B_FULL, "train.batchsize=2")
    assert rc == 2 and "did you mean 'batch_size'" in err
    rc, _, err = run(capsys, LLAMA7B_FULL, "--estimator", "nope")
    assert rc == 2 and "allowed" in err


def test_estimate_says_which_calibration_table_and_how_many_runs(tmp_path, capsys):
    from profiler.cli import main as cli

    fixture = Path(__file__).parents[1] / "data" / "synthetic_runs.jsonl"
    assert cli(["calibrate", str(fixture), "--out", str(tmp_path)]) == 0
    table = tmp_path / "nvidia-h100-80gb-hbm3.csv"
    assert table.is_file()
    capsys.readouterr()
    assert cli(["estimate", "configs/llama7b_full.yaml", "--estimator", "components", "--calibration", str(table)]) == 0
    out = capsys.readouterr().out
    assert f"table {table}" in out.replace("\n", "")
    assert "2 runs of regime full" in out.replace("\n", " ")
    assert cli(["estimate", "configs/llama7b_full.yaml", "--estimator", "components", "--gpu", "no-such-gpu"]) == 0
    assert "uncalibrated: no calibration table for GPU no-such-gpu" in capsys.readouterr().out.replace("\n", " ")


def test_min_gpus_answers_per_strategy_and_the_answer_is_tight(capsys):
    from profiler.formulas.min_gpus import min_gpus

    cfg = load_config(str(REPO_ROOT / "configs" / "llama70b_full.yaml"), ["train.seq_len=2048"])
    budget = parse_bytes("80GiB")
    n, est = min_gpus(cfg, "components", "fsdp2", budget)
    assert n > 1 and est.total <= budget
    from profiler.formulas.min_gpus import with_parallel

    fewer = estimate("components", with_parallel(cfg, strategy="fsdp2", world_size=n - 1))
    assert fewer.total > budget  # one GPU fewer does not fit
    assert min_gpus(cfg, "components", "ddp", budget) is None  # DDP replicates 1.1 TB of state: never fits
    rc, out, _ = run(capsys, str(REPO_ROOT / "configs" / "llama7b_full.yaml"), "--min-gpus", "--gpu-memory", "80GiB")
    assert rc == 0
    for s in ("ddp", "fsdp2", "zero1", "zero2", "zero3", "deepspeed_zero"):
        assert s in out


def test_max_batch_and_seq_say_na_for_estimators_that_ignore_them(capsys):
    """The folk rules do not depend on batch or seq: "n/a (ignores batch)", never "any" (read as unlimited)."""
    rc, out, _ = run(capsys, LLAMA7B_FULL, "--estimator", "rule_1p2x", "--max-batch", "--max-seq")
    assert rc == 0 and "n/a (ignores batch)" in out and "n/a (ignores seq)" in out and " any " not in out
    rc, out, _ = run(capsys, LLAMA7B_FULL, "--estimator", "components", "--max-batch")
    assert rc == 0 and "n/a" not in out
