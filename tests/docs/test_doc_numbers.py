"""Numbers the docs pages state in prose are the code's constants and data rows (tables are generated; see
scripts/*_table.py): each case names the page, the phrase as written and where its number comes from."""

from __future__ import annotations

import csv
import inspect

import pytest

from profiler.config import DEFAULT_CPU_BUDGET_FRACTION, MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, REPO_ROOT
from profiler.formulas.components import ALLOCATOR_SLACK, CUDA_CONTEXT_BYTES

DOCS = REPO_ROOT / "docs"


def _gpu(name: str) -> int:
    with (REPO_ROOT / "profiler" / "data" / "gpus.csv").open(newline="") as f:
        return int(next(r for r in csv.DictReader(f) if r["name"] == name)["total_mib"])


def _estimate_default_gpu_memory() -> str:
    from profiler.commands import estimate

    src = inspect.getsource(estimate)
    return src.split('"--gpu-memory", default="', 1)[1].split('"', 1)[0]


def _paged_margin() -> float:
    from profiler.measure.harness import check_paged_state_fits

    return inspect.signature(check_paged_state_fits).parameters["margin"].default


def _training_context_mib() -> int:
    with (REPO_ROOT / "profiler" / "data" / "cuda_context.csv").open(newline="") as f:
        return int(next(r for r in csv.DictReader(f) if r["use"] == "training")["context_mib"])


CASES = [  # (page, phrase with {} where the number goes, the number as the code gives it)
    ("configuration.md", "tracker budget of {} % of the RAM", lambda: f"{DEFAULT_CPU_BUDGET_FRACTION * 100:.0f}"),
    ("configuration.md", "(default CPU budget: {}% of the RAM available at start",
     lambda: f"{DEFAULT_CPU_BUDGET_FRACTION * 100:.0f}"),
    ("configuration.md", "or over {} MiB, is refused", lambda: f"{MAX_YAML_BYTES // 2**20}"),
    ("configuration.md", "nested deeper than {} levels", lambda: f"{MAX_YAML_DEPTH}"),
    ("configuration.md", "of more than {} values once its aliases", lambda: f"{MAX_YAML_NODES:,}"),
    ("fit.md", "e.g. {} MiB for an H100 80GB", lambda: f"{_gpu('h100-sxm'):,}"),
    ("fit.md", "e.g. {} MiB for an H100 80GB, SXM or PCIe", lambda: f"{_gpu('h100-pcie'):,}"),
    ("fit.md", "SXM or PCIe, {} MiB for", lambda: f"{_gpu('rtx4090'):,}"),
    ("fit.md", "RTX A6000 read {} MiB with ECC on", lambda: f"{_gpu('rtx-a6000'):,}"),
    ("fit.md", "A40 and RTX A6000 read {} MiB", lambda: f"{_gpu('a40'):,}"),
    ("fit.md", "Ada {} MiB with it off", lambda: f"{_gpu('rtx6000-ada'):,}"),
    ("fit.md", "24GB is\n  {} GiB", lambda: f"{24 * 10**9 / 2**30:.2f}"),
    ("fit.md", "the **modelled** one ({} MiB context, assumed", lambda: f"{CUDA_CONTEXT_BYTES // 2**20}"),
    ("estimators.md", "`CUDA_CONTEXT_BYTES` = {} MiB", lambda: f"{CUDA_CONTEXT_BYTES // 2**20}"),
    ("estimators.md", "`ALLOCATOR_SLACK` = {} % of the allocated peak", lambda: f"{ALLOCATOR_SLACK * 100:.0f}"),
    ("commands.md", "`profiler/data/cuda_context.csv`: {} MiB, an assumption", lambda: f"{_training_context_mib()}"),
    ("commands.md", "`--gpu-memory` defaults to {}", _estimate_default_gpu_memory),
    ("commands.md", "fit in\n{} % of the free GPU memory", lambda: f"{_paged_margin() * 100:.0f}"),
]


@pytest.mark.parametrize("page, phrase, value", CASES, ids=[f"{c[0]}:{c[1][:30]}" for c in CASES])
def test_prose_number_is_the_code_s(page, phrase, value):
    text = (DOCS / page).read_text()
    assert phrase.format(value()) in text, (page, phrase.format(value()))


def test_the_estimator_ones_have_a_cuda_context_row():
    assert CUDA_CONTEXT_BYTES // 2**20 == _training_context_mib()  # the csv row says it is the components constant


def test_parallel_page_8_bytes_per_param_is_generated_from_the_parameter_counts():
    """docs/parallel.md's 8 B/param arithmetic is what scripts/param_rule.py writes (meta-device builds, ~5 s CPU),
    and the prose after it compares with the same 405B card count."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("param_rule", REPO_ROOT / "scripts" / "param_rule.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    counts = {arch: mod.params(arch) for arch in mod.MODELS}
    assert mod.page_block() == mod.text(counts)
    page = (DOCS / "parallel.md").read_text()
    assert f"= {counts['llama-2-70b']:,} x 2 B / 8 +" in page  # the init table's sharded weights at world 8
    assert f"not {mod.cards(counts['llama-3.1-405b'])}. DeepSpeed" in page
