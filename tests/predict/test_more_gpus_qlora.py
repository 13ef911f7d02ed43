"""`fit`'s "more GPUs" suggestions for a QLoRA 4-bit config: FSDP2 (simulated) and ZeRO-3 (components only).

The predictor is stubbed with the `components` estimate so that no simulation runs: what is checked is which
suggestions fit proposes and how the ZeRO-3 figure is taken. Run:
`python -m pytest tests/predict/test_more_gpus_qlora.py -q`.
"""

from __future__ import annotations

from conftest import CONFIGS

from profiler.config import load_config
from profiler.formulas import estimate
from profiler.formulas.components import ALLOCATOR_SLACK, CUDA_CONTEXT_BYTES
from profiler.formulas.min_gpus import min_gpus
from profiler.predict import fit as fit_module

QLORA_8B = ["model.arch=llama-3-8b", "train.seq_len=1024", "train.batch_size=1", "regime.prepare_kbit=false",
            "regime.lora.dtype=bfloat16", "train.gradient_checkpointing=true"]


class ComponentsPredictor(fit_module.Predictor):
    """needed = the components total less its CUDA context (what a simulated need holds), no simulation."""

    def needed(self, cfg):
        return estimate("components", cfg).total - self.allowance.context_bytes


def _predictor(cfg) -> ComponentsPredictor:
    """A usable budget between the one-GPU need and the sharded ones, so that only more GPUs make it fit."""
    allowance = fit_module.Allowance("modelled", CUDA_CONTEXT_BYTES, ALLOCATOR_SLACK, None, None, "test")
    one = estimate("components", cfg).total - CUDA_CONTEXT_BYTES
    return ComponentsPredictor(allowance, one - 2**28)  # 256 MiB short of one GPU


def test_qlora4_more_gpus_names_fsdp2_and_zero3():
    cfg = load_config(CONFIGS / "llama7b_qlora4.yaml", QLORA_8B)
    pred = _predictor(cfg)
    assert not pred.fits(cfg)
    out = fit_module.simulated_suggestions(pred, cfg)
    more = {s.overrides[0]: s for s in out if s.change.split()[0] in ("FSDP2", "ZeRO-3")}
    assert set(more) == {"parallel.strategy=fsdp2", "parallel.strategy=zero3"}, [s.change for s in out]
    z3 = more["parallel.strategy=zero3"]
    assert "estimated by components, not simulated" in z3.change and z3.fits
    n = int(z3.overrides[1].split("=")[1])
    found = min_gpus(cfg, "components", "zero3", pred.usable + CUDA_CONTEXT_BYTES)
    assert n == max(2, found[0]) and z3.needed_bytes == found[1].total - CUDA_CONTEXT_BYTES <= pred.usable


def test_zero3_is_not_suggested_outside_qlora4():
    """LoRA (bf16 base): only FSDP2 is proposed, as before; ZeRO-3's suggestion is the QLoRA recipe's."""
    cfg = load_config(CONFIGS / "llama7b_qlora4.yaml", [*QLORA_8B, "regime.kind=lora"])
    assert fit_module.zero3_more_gpus(_predictor(cfg), cfg) is None


def test_trainers_fused_adamw_becomes_adamw_in_the_zero3_suggestion():
    """TRL / Trainer default to adamw_torch_fused, which the config allows under ZeRO only as adam/adamw (the
    harness runs DeepSpeed with torch's AdamW): the suggestion switches it and says so in its overrides."""
    cfg = load_config(None, [], base={"model": {"arch": "llama-3-8b"}, "regime": {"kind": "qlora", "bits": 4},
                                      "train": {"seq_len": 1024}, "device": "cuda"}, recipe="trl")
    assert cfg.optimizer.name == "adamw_fused"
    z3 = fit_module.zero3_more_gpus(_predictor(cfg), cfg)
    assert z3 is not None and z3.overrides[0] == "parallel.strategy=zero3" and z3.overrides[2] == "optimizer.name=adamw"
