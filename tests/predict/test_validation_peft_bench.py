"""PEFT's method-comparison rows (validation/published.yaml, source peft-mc): each row's config must build the model
the source trained. The result files state the trainable and total parameter counts; a wrong rank, target set or
architecture in a row changes them, so the counts pin the configs (no simulation: meta-device counts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiler.formulas.arch import arch_of
from profiler.formulas.params import param_plan
from profiler.predict.validation.rows import load_rows

ROWS = Path(__file__).resolve().parents[2] / "validation" / "published.yaml"
# train_info.num_trainable_params / num_total_params of each result file (huggingface/peft
# method_comparison/MetaMathQA/results/*.json at 51c2ff666b142d004c12609c9686cf17ca055751)
PUBLISHED = {
    "peft-mc-lora-r32-qv": (9_175_040, 3_221_924_864),
    "peft-mc-lora-r64-qv": (18_350_080, 3_231_099_904),
    "peft-mc-rslora-r64-qv": (18_350_080, 3_231_099_904),
    "peft-mc-lora-r10-mlp": (9_461_760, 3_222_211_584),
    "peft-mc-full": (3_212_749_824, 3_212_749_824),
}


@pytest.fixture(scope="module")
def rows():
    return {r.id: r for r in load_rows(ROWS) if r.source == "peft-mc"}


def test_every_expressible_row_of_the_source_is_pinned(rows):
    expressible = {rid for rid, r in rows.items() if not r.not_expressed}
    assert expressible == set(PUBLISHED)
    assert rows["peft-mc-dora-r32-qv"].not_expressed  # DoRA: said, not approximated silently


@pytest.mark.parametrize("rid", sorted(PUBLISHED))
def test_row_config_has_the_published_parameter_counts(rows, rid):
    cfg = rows[rid].run_config()
    trainable, total = PUBLISHED[rid]
    plan = param_plan(cfg)
    assert plan.trainable_numel == trainable
    base = arch_of(cfg).total_params
    assert base + (plan.adapter_numel if cfg.regime.kind == "lora" else 0) == total
    assert cfg.gpu_arch == "sm89"  # the L40S preset's compute capability
    assert cfg.train.autocast == "none" and not cfg.train.gradient_checkpointing and cfg.train.max_grad_norm == 1.0
