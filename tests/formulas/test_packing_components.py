"""`components` with `train.packing` within 5 % of `simulate` (CUDA target): the tokens a row (padding_free: one row of
batch x seq), the block-diagonal mask transformers builds for sdpa (rows x s x s booleans, its additive copy saved in
every layer), and no mask where a cache skips the packing check. Both the totals and the part packing adds (packed
minus unpacked) are compared, on tiny-llama and on a 2-layer Llama-3-8B stand-in (every size of a layer kept).
Run: `python -m pytest tests/formulas/test_packing_components.py`."""

from __future__ import annotations

import json

import pytest

from profiler.config import MODELS_DIR, load_config
from profiler.formulas.components import components_estimate
from profiler.simulate.backend import simulate


def _stand_in(tmp_path_factory, name: str, layers: int = 2) -> str:
    hf = json.loads((MODELS_DIR / f"{name}.json").read_text())
    hf["num_hidden_layers"] = layers
    path = tmp_path_factory.mktemp("arch") / f"{name}-{layers}l.json"
    path.write_text(json.dumps(hf))
    return str(path)


def _pair(arch: str, train: dict, regime: str, recipe: str = "plain") -> tuple[int, int]:
    """(simulated steady peak, components' allocated prediction) of one config."""
    kind = {"kind": "qlora", "bits": 4} if regime == "qlora4" else {"kind": regime}
    base = {"model": {"arch": arch}, "device": "cuda", "recipe": recipe, "regime": kind,
            "train": {"steps": 1, "warmup_steps": 1, "loss": "full", **train}}
    cfg = load_config(None, [], base=base)
    sim = simulate(cfg, primed=True)
    assert sim["status"] == "ok", sim["error"]
    est = components_estimate(cfg)
    return sim["peaks"]["steady_peak_allocated_bytes"], est.total - est.get("overhead")


def _check(arch: str, train: dict, regime: str, recipe: str = "plain", delta: bool = True) -> None:
    steady, predicted = _pair(arch, train, regime, recipe)
    assert abs(predicted - steady) <= 0.05 * steady, (train, regime, predicted, steady)
    if delta:  # what packing adds, against the same tokens unpacked
        plain = {k: v for k, v in train.items() if k not in ("packing", "doc_len")}
        steady0, predicted0 = _pair(arch, plain, regime, recipe)
        assert steady - steady0 > 0
        assert abs((predicted - predicted0) - (steady - steady0)) <= 0.05 * (steady - steady0), (
            train, predicted - predicted0, steady - steady0)


@pytest.mark.parametrize("train, recipe", [
    ({"batch_size": 2, "seq_len": 1024, "gradient_checkpointing": True, "packing": "padding_free", "doc_len": 256},
     "plain"),
    ({"batch_size": 2, "seq_len": 1024, "gradient_checkpointing": True, "packing": "packed", "doc_len": 256}, "plain"),
    ({"batch_size": 2, "seq_len": 1024, "gradient_checkpointing": False, "packing": "padding_free", "doc_len": 256},
     "trl"),  # TRL passes use_cache=False: a mask without checkpointing, saved (additive) in every layer
    ({"batch_size": 2, "seq_len": 1024, "gradient_checkpointing": False, "packing": "packed", "doc_len": 256},
     "plain"),  # a cache: transformers skips the packing check, no mask (only the collator's tensors differ)
    ({"batch_size": 2, "seq_len": 1024, "gradient_checkpointing": False, "packing": "packed_4d", "doc_len": 256},
     "plain"),  # the collator's float mask: one tensor all layers read, held for the whole step
], ids=["padding-free", "packed", "trl-no-ckpt", "cache-no-mask", "packed-4d"])
def test_tiny_packing_within_5_percent(train, recipe):
    masked = recipe == "trl" or train["gradient_checkpointing"] or train["packing"] == "packed_4d"
    _check("tiny-llama", train, "full", recipe, delta=masked)


@pytest.mark.parametrize("regime, train, recipe", [
    ("lora", {"batch_size": 4, "seq_len": 4096, "gradient_checkpointing": True, "packing": "padding_free",
              "doc_len": 1024}, "plain"),
    ("lora", {"batch_size": 4, "seq_len": 4096, "gradient_checkpointing": False, "packing": "packed",
              "doc_len": 1024}, "trl"),
    ("qlora4", {"batch_size": 2, "seq_len": 4096, "gradient_checkpointing": True, "packing": "packed_4d",
                "doc_len": 1024, "autocast": "bf16"}, "plain"),
], ids=["lora-padding-free-ckpt", "lora-packed-trl", "qlora-packed-4d"])
def test_llama3_stand_in_packing_within_5_percent(tmp_path_factory, regime, train, recipe):
    _check(_stand_in(tmp_path_factory, "llama-3-8b"), train, regime, recipe)
