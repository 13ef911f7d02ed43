"""The CUDA overhead constants are guesses: every CUDA `components` estimate says so where it is printed."""

from __future__ import annotations

from conftest import CONFIGS

from profiler.cli import main
from profiler.config import load_config
from profiler.formulas import estimate
from profiler.formulas.components import ALLOCATOR_SLACK, CUDA_CONTEXT_BYTES, OVERHEAD_NOTE


def test_cuda_estimate_names_its_overhead_as_an_assumption():
    for name in ("llama7b_full", "llama7b_inference"):
        est = estimate("components", load_config(CONFIGS / f"{name}.yaml"))
        assert est.components["overhead"] >= CUDA_CONTEXT_BYTES
        assert OVERHEAD_NOTE in est.notes
    assert "assumed" in OVERHEAD_NOTE and "512 MiB" in OVERHEAD_NOTE and f"{ALLOCATOR_SLACK:.0%}" in OVERHEAD_NOTE
    cpu = estimate("components", load_config(CONFIGS / "tiny_full.yaml"))
    assert cpu.components["overhead"] == 0 and "assumed" not in cpu.notes


def test_estimate_command_prints_the_assumption(capsys):
    assert main(["estimate", str(CONFIGS / "llama7b_lora.yaml"), "--estimator", "components"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "overhead assumed (uncalibrated guesses)" in out
