"""The Python API: lazy (import profiler loads no torch), typed results, the CLI's validation as exceptions."""

from __future__ import annotations

import subprocess
import sys

import pytest

import profiler
from profiler.config import REPO_ROOT


def test_import_profiler_is_cheap():
    code = "import sys, profiler; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                         env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}, check=True).stdout
    assert out.split() == ["False", "False"]


def test_typed_results():
    from profiler.formulas import Estimate
    from profiler.predict.fit import FitResult
    from profiler.predict.search import MaxSolution
    from profiler.schema import RunRecord

    cfg = profiler.load_config(REPO_ROOT / "configs/tiny_full.yaml", ["device=cuda", "train.seq_len=32"])
    est = profiler.estimate(cfg, "components")
    assert isinstance(est, Estimate) and est.total == sum(est.components.values())
    rec = profiler.simulate(cfg)
    assert isinstance(rec, RunRecord) and rec.backend == "fake" and rec.status == "ok"
    sol = profiler.max_batch(cfg, gpu_memory="560MiB")  # 512 MiB context + replayed reserve (2/20 MiB segments)
    assert isinstance(sol, MaxSolution) and sol.value >= 1
    res = profiler.fit("tiny-llama", regime="full", seq=32, batch=2, gpu_memory="560MiB", search=False,
                       config=str(REPO_ROOT / "configs/tiny_full.yaml"), recipe="plain")  # the config as simulated
    assert isinstance(res, FitResult) and res.fits and res.verdict().startswith("fits: ")
    assert res.simulated_peak_bytes == rec.peaks.peak_allocated_bytes  # same config, same simulation


@pytest.mark.parametrize("call, message", [
    (lambda: profiler.fit("tiny-llama", gpu="rtx4909"), "did you mean 'rtx4090'"),
    (lambda: profiler.fit("tiny-llama", regime="qlora3", gpu="t4"), "regime: 'qlora3' is not allowed"),
    (lambda: profiler.fit("tiny-llama", gpu="t4", gpu_memory="16GB"), "exactly one of gpu"),
    (lambda: profiler.estimate(REPO_ROOT / "configs/tiny_full.yaml", "nope"), "estimator: 'nope' is not allowed"),
    (lambda: profiler.load_config(REPO_ROOT / "configs/tiny_full.yaml", ["train.batchsize=2"]), "batch_size"),
])
def test_bad_input_raises_config_error(call, message):
    with pytest.raises(profiler.ConfigError, match=message):
        call()


def test_simulate_is_the_subpackage_and_the_api_function():
    """One object: ordinary imports of the subpackage work, and calling it runs the API's simulate."""
    code = """
import profiler.simulate.backend as b
import profiler.simulate.backend
from profiler import simulate
from profiler.simulate import backend
import profiler
assert b is backend is profiler.simulate.backend is __import__('sys').modules['profiler.simulate.backend']
assert simulate is profiler.simulate and callable(simulate)
rec = simulate(profiler.load_config('configs/tiny_full.yaml', ['device=cuda', 'train.seq_len=16', 'train.steps=1']))
assert rec.backend == 'fake' and rec.status == 'ok'
print(type(rec).__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                         env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["RunRecord"]


def test_version_and_usage_name(capsys):
    from profiler.cli import main, prog_name

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"llm-memprof {profiler.__version__}"
    assert prog_name("/venv/bin/llm-memprof") == "llm-memprof"
    assert prog_name("/repo/profiler/__main__.py") == "python -m profiler"
